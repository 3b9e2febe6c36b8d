"""Exports a trained self-compressing model for serving (logic:
`selfcompress.exporting`).

  python tools/export.py --workdir=/tmp/l300 --output=/tmp/l300_served
  python tools/export.py --model=/tmp/l300/model.keras --output=/tmp/l300.tflite --format=tflite
  saved_model_cli show --dir /tmp/l300_served --all
"""

from selfcompress import cli

if __name__ == "__main__":
  cli.export()

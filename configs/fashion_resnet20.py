"""ResNet-20 (3 stages of 3 basic blocks, 16/32/64 filters, BatchNorm, the
`x + y` shortcut with a 1x1 conv projection where the shape changes, global
average pooling) on Fashion-MNIST read from an .npz file.

It shows the two forms for your own model and data (README, "Your own model
and data"): the model is a builder named `package.module:function`
(`selfcompress.models:resnet20`), the data an `npz:` file, written once from
the IDX files:

  python tools/write_dataset.py --dataset=fashion_mnist \
      --data_dir=../shared/data/fashion-mnist \
      --output=/tmp/fashion_npz/fashion_mnist.npz
  python tools/train.py --config=configs/fashion_resnet20.py \
      --config.data_dir=/tmp/fashion_npz --workdir=/tmp/fashion_resnet20

5,000 training images held out for validation; the official 10,000 for
test. Training images are augmented (random crops after 2 pixels of padding,
horizontal flips). The full run (30 epochs of 55,000 images) takes about 2
hours on 2 CPU cores and has not been measured. The benchmark in
BENCHMARKS.md ran a shortened version (10 epochs of 20,000 images, about 8
minutes on 2 shared cores) at budgets of 33 and 66 KB (`--config.target_kb`):
3% and 6% of the 1,089 KB float32 model. `:smoke` shrinks it to a minute.
"""

from selfcompress import config as base


def get_config(arg=None):
  c = base.base()
  c.dataset = "npz:fashion_mnist.npz"  # in data_dir
  c.num_validation = 5000
  c.model = "selfcompress.models:resnet20"
  c.model_kwargs.filters = (16, 32, 64)
  c.model_kwargs.blocks = 3
  c.random_crop_padding = 2
  c.random_flip = True
  c.epochs = 30
  c.batch_size = 128
  c.learning_rate = 1e-3
  c.lr_schedule = "cosine"
  c.gamma = 0.01
  return base.apply_arg(c, arg)

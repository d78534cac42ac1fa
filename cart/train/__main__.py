"""`python -m cart.train ARGS` = `cart train ARGS`; lets torchrun launch training with `-m cart.train`."""
import sys

from cart.cli import main

sys.exit(main(["train", *sys.argv[1:]]))

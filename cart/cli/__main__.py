import sys

from cart.cli import main

sys.exit(main())

"""``python -m hf_tokcomp`` is the ``tokcomp`` command (also under ``accelerate launch -m hf_tokcomp``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

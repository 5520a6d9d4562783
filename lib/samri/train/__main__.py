"""``torchrun --nproc_per_node N -m samri.train --studies DIR --out DIR``: distributed training."""

from __future__ import annotations

import argparse
import logging
import sys

from samri.errors import SamriInputError
from samri.train.cli import add_train_arguments, train_from_args


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m samri.train", description=__doc__)
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return train_from_args(args)
    except SamriInputError as exc:
        print(f"samri.train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        import torch

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())

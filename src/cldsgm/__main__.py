"""`python -m cldsgm` (what torchrun launches): the same CLI as the `cldsgm` console script."""

import os
import sys

from cldsgm.cli import main
from cldsgm.utils.launch import launch

if __name__ == "__main__":
    try:
        main(standalone_mode=True)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if launch().world > 1:
            # gloo workers can abort at interpreter exit ("terminate called without an active exception",
            # a known gloo teardown race); a flushed os._exit after the process group is gone avoids it
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        raise

"""``python -m diffrl.train`` with the tests' graded reward registered, the way a user's own
launcher registers its rewards before handing over to diffrl:

    torchrun --nproc_per_node 2 tests/train_entry.py trainer=fsdp2 task.rewards=[{name: digit_overlap}]
"""

from __future__ import annotations

import distributed_worker  # noqa: F401  (registers digit_overlap; this folder is on sys.path as the script's own)

from diffrl.train import main

if __name__ == "__main__":
    main()

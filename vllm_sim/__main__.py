"""``python -m vllm_sim``: run a vLLM simulator (see ``--help``)."""

import sys

from vllm_sim.cli import main

if __name__ == "__main__":
    sys.exit(main())

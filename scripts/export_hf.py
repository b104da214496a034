"""Export a training checkpoint, or merge a LoRA adapter, into the published checkpoint layout
(config.json + safetensors + tokenizer files), loadable by the original modeling code.

    python scripts/export_hf.py runs/demo/checkpoints/step_000600 --out exported/   # DCP or DeepSpeed checkpoint
    python scripts/export_hf.py runs/demo/final_adapter --out merged/               # peft adapter into its base
    python scripts/export_hf.py adapter/ --base /models/LLaDA-8B-Instruct --out merged/
"""

from __future__ import annotations

import argparse

from diffrl.trainer.export import export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a checkpoints/step_N folder or a peft adapter folder")
    parser.add_argument("--out", required=True, help="folder to write the published-layout model into")
    parser.add_argument("--base", default=None, help="base model folder for an adapter (default: the one its config records)")
    args = parser.parse_args()
    print(export(args.source, args.out, base=args.base))


if __name__ == "__main__":
    main()

"""Small synthetic tasks that need no download: a word-level tokenizer and verl-format rows.

The CPU demo trains on ``sort_digits``: the prompt ``sort 3 1 4 1 5`` asks for ``1 1 3 4 5``.
Each row also carries a *teacher* answer (``extra_info.answer``) that is right only
``teacher_accuracy`` of the time and otherwise a shuffled wrong answer: a short supervised warm
start on it gives a policy that knows the format but sorts only sometimes, which is the starting
point RL then improves (exact-match reward).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EOS, MASK, UNK = "<|endoftext|>", "<|mdm_mask|>", "<|unk|>"
_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['content'] }}{% if not loop.last %} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %} ={% endif %}"
)


def word_tokenizer(words: list[str]) -> Any:
    """A whitespace word-level tokenizer (``tokenizers`` library) with EOS/pad, mask and unk."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([EOS, MASK, UNK, *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, mask_token=MASK, unk_token=UNK)
    fast.chat_template = _CHAT_TEMPLATE
    return fast


@dataclass
class SortDigits:
    """Sort ``num_digits`` random digits ascending."""

    num_digits: int = 5
    num_train: int = 4096
    num_val: int = 256
    teacher_accuracy: float = 0.2
    seed: int = 0

    def tokenizer(self) -> Any:
        return word_tokenizer(["sort", "=", *map(str, range(10))])

    def _row(self, rng: random.Random, index: int, split: str) -> dict[str, Any]:
        digits = [rng.randrange(10) for _ in range(self.num_digits)]
        answer = sorted(digits)
        teacher = list(answer)
        if rng.random() >= self.teacher_accuracy:
            while teacher == answer and len(set(digits)) > 1:
                rng.shuffle(teacher)
        return {
            "data_source": "sort_digits",
            "prompt": [{"role": "user", "content": "sort " + " ".join(map(str, digits))}],
            "reward_model": {"style": "rule", "ground_truth": " ".join(map(str, answer))},
            "extra_info": {"split": split, "index": index, "answer": " ".join(map(str, teacher))},
        }

    def write(self, folder: str | Path) -> dict[str, str]:
        """Write ``train.parquet`` and ``val.parquet`` into ``folder``; return their paths."""
        import pandas as pd

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        rng = random.Random(self.seed)
        paths = {}
        for split, n in (("train", self.num_train), ("val", self.num_val)):
            rows = [self._row(rng, i, split) for i in range(n)]
            paths[split] = str(folder / f"{split}.parquet")
            pd.DataFrame(rows).to_parquet(paths[split])
        return paths


SYNTHETIC_TASKS = {"sort_digits": SortDigits}


def synthetic_task(name: str, **kwargs: Any) -> SortDigits:
    if name not in SYNTHETIC_TASKS:
        raise ValueError(f"task.synthetic.name={name!r} is not one of {', '.join(SYNTHETIC_TASKS)}")
    return SYNTHETIC_TASKS[name](**kwargs)

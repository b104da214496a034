"""Small synthetic tasks that need no download: a word-level tokenizer and verl-format rows.

``sort_digits`` asks ``sort 3 1 4 1 5`` -> ``1 1 3 4 5`` (the CPU demo's task); ``reverse_digits``
asks ``reverse 3 1 4 1 5`` -> ``5 1 4 1 3``; ``increment_digits`` asks ``increment 3 1 9`` -> ``4 2 0``.
Each row also carries a noisy *teacher* answer (``extra_info.answer``): with
``teacher_error="token_noise"`` each digit is right with probability ``teacher_accuracy`` and
otherwise a random digit; with ``"shuffle"`` the whole answer is right with that probability and
otherwise a shuffled wrong permutation. A short supervised warm start on it gives a policy that
knows the format but rarely gets every digit right when sampling, which is the starting point RL
then improves (exact-match reward).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffrl.errors import DiffrlConfigError

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
class DigitTask:
    """Map ``num_digits`` random digits to an answer (``op``: sort ascending, reverse, or add one mod 10)."""

    op: str = "sort"
    num_digits: int = 5
    num_train: int = 4096
    num_val: int = 256
    teacher_accuracy: float = 0.2
    teacher_error: str = "token_noise"
    # Draw distinct digits (sorting then needs comparisons but no counting of repeats).
    distinct: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"digit task op={self.op!r} is not one of {', '.join(_OPS)}")
        if self.teacher_error not in ("token_noise", "shuffle"):
            raise ValueError(f"teacher_error={self.teacher_error!r} is not 'token_noise' or 'shuffle'")

    def tokenizer(self) -> Any:
        """The word-level tokenizer covering every op name, ``=`` and the ten digits."""
        return word_tokenizer([*_OPS, "=", *map(str, range(10))])

    def _row(self, rng: random.Random, teacher_rng: random.Random, index: int, split: str) -> dict[str, Any]:
        digits = rng.sample(range(10), self.num_digits) if self.distinct else [rng.randrange(10) for _ in range(self.num_digits)]
        answer = _OPS[self.op](digits)
        teacher = list(answer)
        if self.teacher_error == "token_noise":
            teacher = [d if teacher_rng.random() < self.teacher_accuracy else teacher_rng.randrange(10) for d in answer]
        elif teacher_rng.random() >= self.teacher_accuracy:
            while teacher == answer and len(set(digits)) > 1:
                teacher_rng.shuffle(teacher)
        return {
            "data_source": f"{self.op}_digits",
            "prompt": [{"role": "user", "content": f"{self.op} " + " ".join(map(str, digits))}],
            "reward_model": {"style": "rule", "ground_truth": " ".join(map(str, answer))},
            "extra_info": {"split": split, "index": index, "answer": " ".join(map(str, teacher))},
        }

    def write(self, folder: str | Path) -> dict[str, str]:
        """Write ``train.parquet`` and ``val.parquet`` into ``folder``; return their paths.

        The training split draws prompts and teacher answers from one stream seeded by ``seed``
        (the rows the demo's recorded curves in docs/benchmarks.md were measured on). The
        validation split draws them from two streams of its own, so it stays the same whatever
        ``num_train`` or the teacher: validation during a training run and a later evaluation with
        the plain task recipe see the same rows.
        """
        import pandas as pd

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for split, n in (("train", self.num_train), ("val", self.num_val)):
            if split == "train":
                rng = teacher_rng = random.Random(self.seed)
            else:
                rng, teacher_rng = random.Random(f"{self.seed}:{split}"), random.Random(f"{self.seed}:{split}:teacher")
            rows = [self._row(rng, teacher_rng, i, split) for i in range(n)]
            paths[split] = str(folder / f"{split}.parquet")
            pd.DataFrame(rows).to_parquet(paths[split])
        return paths


_OPS = {"sort": sorted, "reverse": lambda digits: digits[::-1], "increment": lambda digits: [(d + 1) % 10 for d in digits]}
SYNTHETIC_TASKS = {"sort_digits": "sort", "reverse_digits": "reverse", "increment_digits": "increment"}


def synthetic_task(name: str, **kwargs: Any) -> DigitTask:
    """The task recipe's ``synthetic`` block (``name`` plus :class:`DigitTask` options) as a task."""
    if name not in SYNTHETIC_TASKS:
        raise DiffrlConfigError(f"task.synthetic.name={name!r} is not one of {', '.join(SYNTHETIC_TASKS)}")
    return DigitTask(op=SYNTHETIC_TASKS[name], **kwargs)

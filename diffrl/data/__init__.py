"""Data: verl-format parquet rows, prompt encoding, the resumable loader, synthetic tasks."""

from diffrl.data.loader import PromptLoader
from diffrl.data.prompts import PromptEncoder
from diffrl.data.verl import DataError, load_rows, validate_row

__all__ = ["DataError", "PromptEncoder", "PromptLoader", "load_rows", "validate_row"]

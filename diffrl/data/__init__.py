"""Data: verl-format parquet rows, prompt encoding, the resumable loader, synthetic tasks."""

from diffrl.data.loader import PromptLoader
from diffrl.data.prompts import PromptEncoder, filter_overlong
from diffrl.data.verl import ROW_CHECKS, DataError, RowCheck, load_rows, validate_row

__all__ = ["ROW_CHECKS", "DataError", "PromptEncoder", "PromptLoader", "RowCheck", "filter_overlong", "load_rows", "validate_row"]

"""Loading, normalising and grouping feedback data, and tokenising it.

    rows, stats = load_rows("feedback.jsonl")              # any format -> normalised rows
    examples = build_examples(rows, "d2o", samples=self_samples, k=8)
    encoded = encode(example["prompt"], example["negative"], tokenizer)

See `rows.Row` for the row shape and `examples` for each objective's example shape.
"""

from negalign.data.encode import Encoded, TruncationStats, encode, encode_prompt, encode_prompt_with_context
from negalign.data.errors import DataError
from negalign.data.examples import build_examples
from negalign.data.loading import LoadStats, load_rows
from negalign.data.normalise import DATA_FORMATS, parse_hh_transcript
from negalign.data.rows import Row, complete_pairs, group_by_prompt, pairs_to_negatives, prompt_key

__all__ = [
    "DATA_FORMATS", "DataError", "Encoded", "LoadStats", "Row", "TruncationStats",
    "build_examples", "complete_pairs", "encode", "encode_prompt", "encode_prompt_with_context", "group_by_prompt", "load_rows",
    "pairs_to_negatives", "parse_hh_transcript",
    "prompt_key",
]

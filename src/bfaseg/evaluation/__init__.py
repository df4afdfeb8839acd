"""The evaluation stage: score predictions, aggregate them, write ``summary.json``.

``bfaseg evaluate``, ``bfaseg predict`` (:func:`predict_files`) and ``bfaseg experiment`` score through
this package.
"""

from bfaseg.evaluation.evaluate import DATASETS, evaluate_cases, evaluate_split
from bfaseg.evaluation.predict import predict_files
from bfaseg.evaluation.scoring import case_row, format_table, score_case, summarize, summary_metrics

__all__ = ["DATASETS", "evaluate_cases", "evaluate_split", "predict_files", "case_row", "format_table", "score_case", "summarize", "summary_metrics"]

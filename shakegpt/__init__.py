"""ShakeGPT: GPT-2 (124M) from scratch, trained on Shakespeare. Learners import `shakegpt_utils`, the table of
contents of this package, grouped by the notebook that teaches each piece."""

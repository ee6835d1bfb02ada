"""ShakeGPT: GPT-2 (124M) from scratch, trained on Shakespeare. Learners import `shakegpt_utils`, which re-exports
this package's sections in the order the course teaches them."""

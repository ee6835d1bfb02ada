"""Plausible wrong answers to every exercise, each a whole learner's cell: what its check must refuse. They call the
reference the check compares with, are off by one, forget a division, a factor or a seed, or get a rule backwards."""

DROPOUT_RUN_WITH = """\
def dropout_run(dropout):
    run = DROPOUT_RUN
    sg.set_seed(run['seed'] + {seed})
    model = sg.GPT(sg.GPTConfig.preset(run['preset'], dropout=dropout)).to(device)
    optimizer = sg.configure_optimizer(model, {decay}, run['lr'] * {rate}, device_type=device.type)
    batches = sg.TokenBatches(train_tokens, run['batch_size'], run['seq_len'], shuffle=True, seed=run['seed'])
    precision = sg.get_precision(device)
    losses = [sg.train_step(model, optimizer, batches, 1, precision, device, {clip})[0].item()
              for _ in range(run['steps'])]
    windows = sg.evaluation_windows(val_tokens, run['batch_size'], run['seq_len'], run['eval_windows'])
    return model, losses, sg.evaluate(model, windows, precision, device)
"""  # exercise 06/1, with its seed offset, rate factor, weight decay and clip filled in

BPE_TRAINER_WITH = """\
def train_bpe(data, n_merges):
    ids, merges, counts = list(data), [], []
    for new_id in range({first}, {first} + n_merges):
        pair_counts = Counter(itertools.pairwise(ids))
        pair = {pick}
        merged = merge_pair(ids, pair, new_id)
        merges.append(pair)
        counts.append({count})
        ids = merged
    return merges, counts, ids
"""  # exercise 01/1, with the first new id, the rule that picks a pair and the count filled in

PENALISED_GREEDY = """
@torch.no_grad()
def penalised_greedy(model, idx, new_tokens, penalty):
    for _ in range(new_tokens):
        logits = model(idx[:, -model.config.block_size :])[0][:, -1, :].float()
        idx = torch.cat([idx, apply_repetition_penalty(logits, idx, penalty).argmax(-1, keepdim=True)], 1)
    return idx
"""  # exercise 08/2's decoding, around each wrong penalty

MUTANTS: dict[str, dict[int, list[str]]] = {
    "00": {
        1: [
            """\
def matmul_flops(m, k, n):
    return m * k * n  # multiply-adds, not FLOPs

def achieved_tflops(m, k, n, seconds):
    return 2 * m * k * n / seconds / 1e12

def linear_training_flops(tokens, d_in, d_out):
    return 6 * tokens * d_in * d_out
""",
            """\
def matmul_flops(m, k, n):
    return 2 * m * k * n

def achieved_tflops(m, k, n, seconds):
    return matmul_flops(m, k, n) / seconds / 1e12

def linear_training_flops(tokens, d_in, d_out):
    return 2 * matmul_flops(tokens, d_in, d_out)  # no grad input
""",
            """\
def matmul_flops(m, k, n):
    return 2 * m * k * n

def achieved_tflops(m, k, n, seconds):
    return matmul_flops(m, k, n) / seconds  # no / 1e12

def linear_training_flops(tokens, d_in, d_out):
    return 3 * matmul_flops(tokens, d_in, d_out)
""",
        ],
        2: [
            """\
def tensor_bytes(shape, dtype):
    return math.prod(shape) * 4  # float32's size for every dtype

def training_memory_bytes(n_params):
    return 16 * n_params
""",
            """\
def tensor_bytes(shape, dtype):
    return math.prod(shape) * dtype.itemsize

def training_memory_bytes(n_params):
    return 12 * n_params  # one moment forgotten
""",
            """\
def tensor_bytes(shape, dtype):
    return (math.prod(shape) if shape else 0) * dtype.itemsize  # a scalar: 0

def training_memory_bytes(n_params):
    return 16 * n_params
""",
        ],
    },
    "01": {
        1: [
            BPE_TRAINER_WITH.format(**wrong)
            for wrong in (
                dict(
                    first=256,
                    pick="[p for p, c in pair_counts.items() if c == max(pair_counts.values())][-1]",
                    count="len(ids) - len(merged)",
                ),  # ties to the last pair seen
                dict(
                    first=255, pick="max(pair_counts, key=pair_counts.get)", count="len(ids) - len(merged)"
                ),  # from 255
                dict(
                    first=256, pick="max(pair_counts, key=pair_counts.get)", count="pair_counts[pair]"
                ),  # with overlaps
            )
        ],  # fmt: skip
        2: [
            """\
def gpt2_encode_piece(piece):
    return enc.encode(piece)
""",
            """\
def gpt2_encode_piece(piece):
    parts = [bytes([b]) for b in piece.encode('utf-8')]
    while len(parts) > 1:
        for i in range(len(parts) - 1):  # the first pair that joins
            try:
                enc.encode_single_token(parts[i] + parts[i + 1])
            except KeyError:
                continue
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
            break
        else:
            break
    return [enc.encode_single_token(part) for part in parts]
""",
        ],
        3: [
            """\
def batch_at(tokens, starts, seq_len):
    x = torch.from_numpy(np.stack([tokens[s : s + seq_len] for s in starts]).astype(np.int64))
    return x, x.clone()  # y not shifted
""",
            """\
def batch_at(tokens, starts, seq_len):
    windows = np.stack([tokens[s + 1 : s + seq_len + 2] for s in starts])  # one token late
    windows = torch.from_numpy(windows.astype(np.int64))
    return windows[:, :-1], windows[:, 1:]
""",
        ],
    },
    "02": {
        1: [
            """\
def local_causal_mask(seq_len, window):
    t = torch.arange(seq_len).unsqueeze(1)
    s = torch.arange(seq_len).unsqueeze(0)
    return (t - s >= 0) & (t - s <= window)  # one too many
""",
            """\
def local_causal_mask(seq_len, window):
    t = torch.arange(seq_len).unsqueeze(1)
    s = torch.arange(seq_len).unsqueeze(0)
    return (t - s).abs() < window  # sees the future
""",
        ],
        2: [
            """\
def attention_score_bytes(batch_size, n_head, seq_len, n_layer, dtype):
    return n_layer * batch_size * n_head * seq_len * seq_len * dtype.itemsize

def longest_sequence(batch_size, n_head, n_layer, dtype, memory_bytes):
    per = attention_score_bytes(batch_size, n_head, 1, n_layer, dtype)
    return math.ceil(math.sqrt(memory_bytes / per))  # rounded up
""",
            """\
def attention_score_bytes(batch_size, n_head, seq_len, n_layer, dtype):
    return n_layer * batch_size * n_head * seq_len * seq_len * dtype.itemsize

def longest_sequence(batch_size, n_head, n_layer, dtype, memory_bytes):
    return memory_bytes // attention_score_bytes(batch_size, n_head, 1, n_layer, dtype)  # as if linear
""",
            """\
def attention_score_bytes(batch_size, n_head, seq_len, n_layer, dtype):
    return batch_size * n_head * seq_len * seq_len * dtype.itemsize  # one layer only

def longest_sequence(batch_size, n_head, n_layer, dtype, memory_bytes):
    return math.isqrt(memory_bytes // attention_score_bytes(batch_size, n_head, 1, n_layer, dtype))
""",
        ],
        3: [
            """\
def causal_weights(q, k, scale):
    T = q.size(-2)
    scores = q @ k.transpose(-2, -1)  # scale ignored
    future = ~torch.tril(torch.ones(T, T, dtype=torch.bool, device=q.device))
    return scores.masked_fill(future, float('-inf')).softmax(dim=-1)
""",
            """\
def causal_weights(q, k, scale):
    T = q.size(-2)
    scores = scale * (q @ k.transpose(-2, -1))
    future = ~torch.tril(torch.ones(T, T, dtype=torch.bool, device=q.device), diagonal=-1)  # not itself
    return scores.masked_fill(future, float('-inf')).softmax(dim=-1).nan_to_num()
""",
            """\
def causal_weights(q, k, scale):
    T = q.size(-2)
    scores = scale * (q @ k.transpose(-2, -1))
    future = ~torch.tril(torch.ones(T, T, dtype=torch.bool, device=q.device))
    return scores.masked_fill(future, float('-inf')).softmax(dim=-2)  # over queries
""",
        ],
    },
    "03": {
        1: [
            """\
def gelu_exact(x):
    return F.gelu(x)
""",
            """\
def gelu_exact(x):
    return torch.nn.GELU()(x)
""",
            """\
def gelu_exact(x):
    return x * 0.5 * (1.0 + torch.erf(x / 2.0))  # / 2, not / sqrt(2)
""",
            """\
def gelu_exact(x):
    return gelu_tanh(x)
""",
        ],
        2: [
            """\
class PostNormBlock(Block):
    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))  # still pre-norm
""",
            """\
class PostNormBlock(Block):
    def forward(self, x):
        x = self.ln_1(x) + self.attn(x)
        return self.ln_2(x) + self.mlp(x)  # the LayerNorm on the wrong side
""",
        ],
    },
    "04": {
        1: [
            """\
def gpt2_param_count(n_layer, n_embd, vocab_size, block_size):
    C = n_embd
    return 2 * vocab_size * C + block_size * C + n_layer * (12 * C**2 + 13 * C) + 2 * C  # wte twice
""",
            """\
def gpt2_param_count(n_layer, n_embd, vocab_size, block_size):
    C = n_embd
    return vocab_size * C + block_size * C + n_layer * (12 * C**2 + 13 * C)  # no final LayerNorm
""",
            """\
def gpt2_param_count(n_layer, n_embd, vocab_size, block_size):
    C = n_embd
    return vocab_size * C + block_size * C + n_layer * (12 * C**2 + 9 * C) + 2 * C  # biases miscounted
""",
        ],
        2: [
            """\
def forward_flops_per_token(config, seq_len):
    C, L = config.n_embd, config.n_layer
    return L * 12 * C**2 + config.vocab_size * C + L * 2 * seq_len * C  # multiply-adds, not FLOPs
""",
            """\
def forward_flops_per_token(config, seq_len):
    C, L = config.n_embd, config.n_layer
    return 2 * (L * 12 * C**2 + config.vocab_size * C)  # attention's products forgotten
""",
            """\
def forward_flops_per_token(config, seq_len):
    C, L = config.n_embd, config.n_layer
    return 2 * (L * 12 * C**2 + L * 2 * seq_len * C)  # the output layer forgotten
""",
        ],
    },
    "05": {
        1: [
            """\
def accumulate_gradients(model, x, y, micro_steps):
    model.zero_grad(set_to_none=True)
    for xm, ym in zip(x.chunk(micro_steps), y.chunk(micro_steps), strict=True):
        model(xm, ym)[1].backward()  # not divided
    return flat_gradient(model)
""",
            """\
def accumulate_gradients(model, x, y, micro_steps):
    for xm, ym in zip(x.chunk(micro_steps), y.chunk(micro_steps), strict=True):  # no zero_grad
        (model(xm, ym)[1] / micro_steps).backward()
    return flat_gradient(model)
""",
            """\
def accumulate_gradients(model, x, y, micro_steps):
    model.zero_grad(set_to_none=True)
    for xm, ym in zip(x.chunk(micro_steps), y.chunk(micro_steps), strict=True):
        (model(xm, ym)[1] / len(x)).backward()  # divided by the sequences
    return flat_gradient(model)
""",
        ],
        2: [
            """\
def spacing_above_one(precision_bits):
    return 2.0 ** (-precision_bits)  # one bit off
""",
            """\
def spacing_above_one(precision_bits):
    dtype = {24: torch.float32, 11: torch.float16, 8: torch.bfloat16}[precision_bits]
    return torch.finfo(dtype).eps
""",
        ],
        3: [
            """\
def fit_by_hand(peak_one, peak_two, memory_bytes, batch_size, margin=0.85):
    slope = peak_two - peak_one
    micro = min(batch_size, int((margin * memory_bytes - peak_one) // slope) + 1)  # not a divisor
    if micro < 1:
        raise ValueError('nothing fits')
    return micro, batch_size // micro
""",
            """\
def fit_by_hand(peak_one, peak_two, memory_bytes, batch_size, margin=0.85):
    slope = peak_two - peak_one
    for micro in range(batch_size, 0, -1):
        if batch_size % micro == 0 and peak_one + (micro - 1) * slope <= memory_bytes:  # no margin
            return micro, batch_size // micro
    raise ValueError('nothing fits')
""",
            """\
def fit_by_hand(peak_one, peak_two, memory_bytes, batch_size, margin=0.85):
    for micro in range(batch_size, 0, -1):
        if batch_size % micro == 0 and micro * peak_one <= margin * memory_bytes:  # all of it per sequence
            return micro, batch_size // micro
    raise ValueError('nothing fits')
""",
        ],
    },
    "06": {
        1: [
            DROPOUT_RUN_WITH.format(**wrong)
            for wrong in (
                dict(seed=1, rate=1, decay=0.1, clip=1.0),  # another seed
                dict(seed=0, rate=2, decay=0.1, clip=1.0),  # another rate
                dict(seed=0, rate=1, decay=0.0, clip=1.0),  # no weight decay
                dict(seed=0, rate=1, decay=0.1, clip=0.0),  # no clipping
            )
        ],
        2: [
            """\
def clip_gradients(parameters, max_norm):
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm).item()
""",
            """\
def clip_gradients(parameters, max_norm):
    norms = []
    for p in parameters:  # each tensor on its own
        norm = p.grad.norm()
        p.grad.mul_((max_norm / norm).clamp(max=1.0))
        norms.append(norm)
    return torch.linalg.vector_norm(torch.stack(norms)).item()
""",
            """\
def clip_gradients(parameters, max_norm):
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters]))
    for p in parameters:
        p.grad.mul_(max_norm / norm)  # also stretches a short gradient
    return norm.item()
""",
        ],
    },
    "07": {
        1: [
            """\
def perplexity(batch_losses, batch_tokens):
    return math.exp(sum(batch_losses) / len(batch_losses))  # the mean of the batches' means
""",
            """\
def perplexity(batch_losses, batch_tokens):
    return sum(math.exp(loss) * n for loss, n in zip(batch_losses, batch_tokens)) / sum(batch_tokens)
""",
        ],
        2: [
            """\
def bigram_distribution(counts, previous, alpha):
    return np.exp(bigram_log_probs(counts, np.full(V, previous), np.arange(V), alpha))
""",
            """\
def bigram_distribution(counts, previous, alpha):
    return alpha * counts['unigram'] / (counts['previous_counts'][previous] + alpha)  # no pair counts
""",
        ],
    },
    "08": {
        1: [
            """\
def top_p_probabilities(logits, p):
    probs = F.softmax(logits.float(), dim=-1)
    ordered, order = probs.sort(dim=-1, descending=True)
    keep = ordered.cumsum(dim=-1) <= p  # drops the token that crosses p
    kept = torch.zeros_like(probs).scatter(-1, order, ordered * keep)
    return kept / kept.sum(dim=-1, keepdim=True)
""",
            """\
def top_p_probabilities(logits, p):
    probs = F.softmax(logits.float(), dim=-1)
    ordered, order = probs.sort(dim=-1, descending=True)
    keep = (ordered.cumsum(dim=-1) - ordered) < p
    return torch.zeros_like(probs).scatter(-1, order, ordered * keep)  # not renormalised
""",
            """\
def top_p_probabilities(logits, p):
    probs = sg.sampling_probabilities(logits, 1.0, top_p=p)  # the library's own nucleus
    return probs / probs.sum(dim=-1, keepdim=True)
""",
        ],
        2: [
            """\
def apply_repetition_penalty(logits, tokens, penalty):
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, tokens, True)
    return torch.where(seen, logits / penalty, logits)  # negative logits go up
"""
            + PENALISED_GREEDY,
            """\
def apply_repetition_penalty(logits, tokens, penalty):
    out = logits.clone()
    for b in range(tokens.size(0)):
        for t in tokens[b].tolist():  # once per occurrence
            out[b, t] = out[b, t] / penalty if out[b, t] > 0 else out[b, t] * penalty
    return out
"""
            + PENALISED_GREEDY,
        ],
        3: [
            """\
def kv_cache_bytes(n_layer, n_embd, tokens, bytes_per_value, batch_size):
    return n_layer * batch_size * tokens * n_embd * bytes_per_value  # the values forgotten

def longest_context(n_layer, n_embd, weight_bytes, memory_bytes, bytes_per_value, batch_size):
    return (memory_bytes - weight_bytes) // kv_cache_bytes(n_layer, n_embd, 1, bytes_per_value, batch_size)
""",
            """\
def kv_cache_bytes(n_layer, n_embd, tokens, bytes_per_value, batch_size):
    return 2 * n_layer * batch_size * tokens * n_embd * bytes_per_value

def longest_context(n_layer, n_embd, weight_bytes, memory_bytes, bytes_per_value, batch_size):
    per = kv_cache_bytes(n_layer, n_embd, 1, bytes_per_value, batch_size)
    return -(-(memory_bytes - weight_bytes) // per)  # rounded up
""",
            """\
def kv_cache_bytes(n_layer, n_embd, tokens, bytes_per_value, batch_size):
    return 2 * n_layer * batch_size * tokens * n_embd * bytes_per_value

def longest_context(n_layer, n_embd, weight_bytes, memory_bytes, bytes_per_value, batch_size):
    return memory_bytes // kv_cache_bytes(n_layer, n_embd, 1, bytes_per_value, batch_size)  # no weights
""",
        ],
    },
}

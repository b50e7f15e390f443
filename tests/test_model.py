import math

import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig
from model.evaluate import perplexity
from model.checkpoint import compiled_decoding, inference_device, inference_dtype, load_gpt
from model.lit import cosine_with_warmup
from model.sample import (Sampler, cache_size, chunk_tops, chunked_argmax, exponential_noise, generate, kth_largest,
                          penalise_repeats, sample_text, sorted_nucleus)
from model.bpe import EOT

TINY = GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture
def gpt():
    torch.manual_seed(0)
    return GPT(TINY).eval()


def test_logits_cover_the_real_vocabulary_only(gpt):
    logits = gpt(torch.randint(0, 50257, (2, 10)))
    assert logits.shape == (2, 10, 50257)
    assert gpt.lm_head.weight.shape[0] == 50304  # padded for speed, never scored


def test_gpt2_init_and_tied_embeddings(gpt):
    assert gpt.lm_head.weight is gpt.wte.weight
    proj = torch.cat([b.attn.c_proj.weight.flatten() for b in gpt.h] + [b.mlp.c_proj.weight.flatten() for b in gpt.h])
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(2 * TINY.n_layer), rel=0.1)
    assert gpt.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_attention_is_causal(gpt):
    x = torch.randint(0, 50257, (1, 12))
    y = x.clone()
    y[0, 8:] = 7
    assert torch.allclose(gpt(x)[0, :8], gpt(y)[0, :8], atol=1e-5)


def test_context_longer_than_block_is_refused(gpt):
    with pytest.raises(ValueError, match="longer than the context"):
        gpt(torch.zeros(1, 65, dtype=torch.long))


def reference_perplexity(model, ids, context, stride):
    """HF's documented loop: labels of already-scored tokens are masked with -100."""
    nlls, counts, prev_end = [], 0, 0
    for begin in range(0, ids.numel(), stride):
        end = min(begin + context, ids.numel())
        trg_len = end - prev_end
        window = ids[begin:end].unsqueeze(0)
        labels = window.clone()
        labels[:, :-trg_len] = -100
        logits = model(window)
        loss = F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="sum")
        nlls.append(loss)
        counts += (labels[0, 1:] != -100).sum().item()
        prev_end = end
        if end == ids.numel():
            break
    return math.exp(torch.stack(nlls).sum().item() / counts)


@pytest.mark.parametrize("context, stride", [(64, 64), (64, 32), (64, 17), (32, 8)])
def test_strided_perplexity_matches_hf_method(gpt, context, stride):
    ids = torch.randint(0, 50257, (300,))
    assert perplexity(gpt, ids, context, stride) == pytest.approx(reference_perplexity(gpt, ids, context, stride),
                                                                 rel=1e-4)


def test_perplexity_with_whole_sequence_in_context_is_plain_cross_entropy(gpt):
    ids = torch.randint(0, 50257, (50,))
    plain = math.exp(F.cross_entropy(gpt(ids[None])[0, :-1], ids[1:]).item())
    assert perplexity(gpt, ids, context=64, stride=32) == pytest.approx(plain, rel=1e-5)


def test_untrained_model_is_near_uniform(gpt):
    assert perplexity(gpt, torch.randint(0, 50257, (200,)), 64, 32) == pytest.approx(50257, rel=0.1)


def test_sampling_is_deterministic_for_a_seed(gpt):
    a = sample_text(gpt, "Hello there", max_new_tokens=12, seed=3)
    assert a == sample_text(gpt, "Hello there", max_new_tokens=12, seed=3)
    assert a != sample_text(gpt, "Hello there", max_new_tokens=12, seed=4)
    assert a.startswith("Hello there")


class EndsAfterThree(torch.nn.Module):
    """The GPT, except that <|endoftext|> becomes certain once the sequence has 5 tokens."""

    def __init__(self, gpt):
        super().__init__()
        self.gpt, self.config, self.new_cache = gpt, gpt.config, gpt.new_cache

    def forward(self, ids, cache=None):
        logits = self.gpt(ids, cache)
        if cache.length >= 5:
            logits[..., EOT] += 1e4
        return logits


def test_generation_stops_at_end_of_text(gpt):
    out = generate(EndsAfterThree(gpt), torch.tensor([[464, 3290]]), max_new_tokens=20, temperature=0.8, top_k=40)
    assert out.shape[1] == 6 and out[0, -1].item() == EOT
    assert sample_text(EndsAfterThree(gpt), "The dog", max_new_tokens=20).count("<|endoftext|>") == 0


def test_top_k_one_is_greedy(gpt):
    ids = torch.tensor([[464, 3290, 318]])
    g = torch.Generator().manual_seed(0)
    assert torch.equal(generate(gpt, ids, 8, temperature=1.0, top_k=1, generator=g), generate(gpt, ids, 8, temperature=0))


def test_lr_schedule_warms_up_then_decays_to_floor():
    lrs = [cosine_with_warmup(s, 10, 100, 0.1) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[100] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)


@pytest.mark.parametrize("safetensors", [True, False])
def test_from_hf_matches_transformers_logits(tmp_path, safetensors):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64)).eval()
    with torch.no_grad():
        for p in hf.parameters():  # no zero-initialised biases that could hide a weight left behind
            p.add_(torch.randn_like(p) * 0.02)
    hf.save_pretrained(tmp_path, safe_serialization=safetensors)
    ours = GPT.from_hf(str(tmp_path)).eval()
    ids = torch.randint(0, 50257, (2, 30))
    assert ours(ids).shape == (2, 30, 50257)
    assert torch.allclose(ours(ids), hf(ids).logits, atol=1e-4)


def test_to_hf_round_trip(gpt, tmp_path):
    from transformers import GPT2LMHeadModel

    gpt.to_hf(str(tmp_path))
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    hf = GPT2LMHeadModel.from_pretrained(tmp_path, local_files_only=True).eval()
    ids = torch.randint(0, 50257, (1, 40))
    assert torch.allclose(gpt(ids), hf(ids).logits, atol=1e-4)
    assert torch.allclose(GPT.from_hf(str(tmp_path))(ids), gpt(ids), atol=1e-5)


def test_inference_runs_in_full_precision_on_a_cpu_and_bf16_on_a_gpu():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    with pytest.MonkeyPatch.context() as patch:
        for available, expected in ((True, "cuda"), (False, "cpu")):
            patch.setattr(torch.cuda, "is_available", lambda: available)
            assert inference_device("auto") == torch.device(expected)
    assert inference_device("cpu") == cpu
    assert inference_dtype("auto", cpu) == torch.float32 and inference_dtype("auto", gpu) == torch.bfloat16
    assert inference_dtype("float16", cpu) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'fp42'"):
        inference_dtype("fp42", cpu)


def test_decoding_is_compiled_on_a_gpu_unless_told_otherwise():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert compiled_decoding("auto", gpu) and not compiled_decoding("auto", cpu)
    assert compiled_decoding(True, cpu) and not compiled_decoding(False, gpu)
    with pytest.raises(ValueError, match="true, false or auto"):
        compiled_decoding("sometimes", gpu)


def test_load_gpt_in_bf16_keeps_the_model(gpt, tmp_path):
    gpt.to_hf(str(tmp_path))
    half = load_gpt(str(tmp_path), "cpu", "bfloat16")
    assert half.wte.weight.dtype == torch.bfloat16 and not half.training
    ids = torch.randint(0, 50257, (1, 40))
    assert torch.allclose(half(ids).float(), gpt(ids), atol=0.05)
    assert generate(half, ids, 10, temperature=0.8, top_k=40).shape == (1, 50)


needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")


def onednn_products(model, ids) -> int:
    """How many of oneDNN's packed products a forward pass of `model` ran."""
    with torch.profiler.profile() as prof:
        model(ids)
    return sum(event.name == "mkldnn::_linear_pointwise" for event in prof.events())


@needs_onednn
def test_packed_linears_compute_what_plain_ones_do_without_autograd(gpt):
    ids = torch.randint(0, 50257, (3, 20))
    with torch.no_grad():
        plain = gpt(ids)
        assert onednn_products(gpt, ids) == 0
        gpt.pack_for_cpu()
        assert onednn_products(gpt, ids) == 4 * TINY.n_layer + 1  # every Linear, the output layer included
        assert torch.allclose(gpt(ids), plain, atol=1e-5)
        gpt.lm_head.weight.mul_(2)  # a weight changed after packing is read unpacked
        assert onednn_products(gpt, ids) == 4 * TINY.n_layer
        changed = gpt(ids)
    assert onednn_products(gpt, ids) == 0  # training takes the plain path
    assert torch.allclose(changed, gpt(ids), atol=1e-5)


@needs_onednn
def test_a_model_made_under_inference_mode_is_packed_too():
    with torch.inference_mode():
        model = GPT(TINY).eval().pack_for_cpu()
        assert onednn_products(model, torch.randint(0, 50257, (1, 5))) == 4 * TINY.n_layer + 1


@needs_onednn
def test_a_bfloat16_model_is_packed_too_and_float16_is_not(gpt):
    ids = torch.randint(0, 50257, (2, 9))
    with torch.no_grad():
        half = gpt.to(torch.bfloat16)
        plain = half(ids)
        assert onednn_products(half.pack_for_cpu(), ids) == 4 * TINY.n_layer + 1
        assert torch.allclose(half(ids).float(), plain.float(), atol=0.02)
        assert onednn_products(gpt.to(torch.float16).pack_for_cpu(), ids) == 0


def naive_greedy(model, ids, n):
    """Greedy decoding without a cache: the whole sequence through the model for every token."""
    for _ in range(n):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def test_kv_cache_decoding_equals_full_recomputation(gpt):
    ids = torch.randint(0, 50257, (2, 7))
    assert torch.equal(generate(gpt, ids, 30, temperature=0), naive_greedy(gpt, ids, 30))


def test_caches_come_in_few_sizes_that_hold_the_whole_generation():
    assert [cache_size(n, 1024) for n in (5, 128, 129, 288, 600, 5000)] == [128, 128, 256, 512, 1024, 1024]


def test_compiled_decoding_in_a_cache_shorter_than_the_context():
    """A 512-position model writing 40 tokens after 10 decodes in a 128-position cache."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=512, n_layer=2, n_head=2, n_embd=32)).eval()
    ids = torch.randint(0, 50257, (1, 10))
    assert torch.equal(generate(model, ids, 40, temperature=0, compile=True), naive_greedy(model, ids, 40))


def test_static_cache_decoding_equals_full_recomputation(gpt):
    """The fixed-shape decode path that torch.compile captures, run eagerly."""
    ids = torch.randint(0, 50257, (2, 7))
    cache = gpt.new_cache(2)
    gpt(ids, cache)
    cache.make_static()
    for _ in range(5):
        nxt = naive_greedy(gpt, ids, 1)[:, -1:]
        assert torch.allclose(gpt(nxt, cache)[:, -1], gpt(torch.cat([ids, nxt], 1))[:, -1], atol=1e-4)
        ids = torch.cat([ids, nxt], 1)


def test_a_static_cache_read_through_a_narrower_window_gives_the_same_logits_bit_for_bit():
    """The playground's batch narrows the window to the positions its rows have reached."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=512, n_layer=2, n_head=2, n_embd=32)).eval()
    cache = model.new_cache(3)
    model(torch.randint(0, 50257, (3, 90)), cache)
    cache.make_static()
    cache.position.copy_(torch.tensor([90, 3, 41]))  # rows at different positions
    token = torch.randint(0, 50257, (3, 1))
    with torch.no_grad():
        full = model(token, cache)
        for window in (256, 128):
            cache.position -= 1
            cache.window = window
            assert cache.visible().shape[-1] == window
            assert torch.equal(model(token, cache), full)


def test_generation_past_the_context_keeps_going(gpt):
    out = generate(gpt, torch.randint(0, 50257, (1, 60)), 40, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 100)


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    probs = Sampler.alike(1, "cpu", 1.0, None, 0.75, 1.0).race(logits, None).scores.softmax(-1)
    assert torch.allclose(probs, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))


def test_a_nucleus_among_the_candidates_keeps_what_a_full_sort_keeps():
    torch.manual_seed(0)
    top_p = torch.tensor([[0.9], [0.5], [0.99], [0.1]])
    sampler = Sampler(torch.ones(4, 1), torch.zeros(4, 1, dtype=torch.long), top_p, torch.ones(4, 1))
    raced_where = set()
    for scale in (0.5, 3, 8, 20):  # flat rows need the full sort, peaked ones not
        logits = torch.randn(4, 50257) * scale
        race, full = sampler.race(logits, None), sorted_nucleus(logits, top_p)
        opened = race.open_rows.tolist()
        for row in range(4):
            if row in opened:
                assert torch.equal(race.open_scores[opened.index(row)], full[row])
            else:
                kept = race.scores[row].isfinite()
                assert torch.equal(race.ids[row][kept].sort().values, torch.nonzero(full[row].isfinite()).flatten())
                assert torch.equal(race.scores[row][kept], full[row][race.ids[row][kept]])
            raced_where.add(row in opened)
    assert raced_where == {True, False}


def test_a_nucleus_among_the_candidates_is_raced_there_with_the_same_winner():
    """Rows sampling from a nucleus race among their likeliest tokens when every nucleus lies there
    (peaked rows), over the vocabulary otherwise (flat rows); each token keeps its own noise, so
    the winner is the one of a race over the whole vocabulary."""
    torch.manual_seed(0)
    sampler = Sampler.alike(6, "cpu", 0.9, None, 0.9, 1.0)
    for scale, among_candidates in ((8, True), (0.5, False)):
        logits = torch.randn(6, 50257) * scale
        assert (sampler.race(logits, None).open_rows.numel() == 0) == among_candidates
        noise = exponential_noise(torch.empty(6, 50257), torch.Generator().manual_seed(int(scale)))
        over_vocabulary = (sorted_nucleus(logits / 0.9, sampler.top_p) - noise.log()).argmax(-1, keepdim=True)
        assert torch.equal(sampler(logits, None, noise), over_vocabulary)


def test_rows_with_different_settings_sample_as_they_would_alone():
    """Each kind of row (top k, top k and top p, top p alone, no filter, a top k past the
    candidates, greedy with a penalty) picks the same token batched as alone, from its own noise."""
    torch.manual_seed(0)
    settings = [(0.8, 40, None, 1.0), (1.0, 5, 0.5, 1.2), (0.9, None, 0.9, 1.0), (1.1, None, None, 1.0),
                (1.0, 1000, None, 1.3), (0.0, 40, None, 1.5)]
    rows = [Sampler.alike(1, "cpu", *s) for s in settings]
    batch = Sampler(*(torch.cat([getattr(r, name) for r in rows]) for name in ("temperature", "top_k", "top_p", "penalty")))
    for scale in (0.5, 8):
        logits = torch.randn(len(rows), 50257) * scale
        seen = torch.rand(len(rows), 50257) < 0.01
        noise = torch.ones(len(rows), 50257)
        for row, sampler in enumerate(rows):
            exponential_noise(noise[row, :sampler.noise_width(50257)], torch.Generator().manual_seed(row))
        together = batch(logits, seen, noise)
        alone = [sampler(logits[r:r + 1], seen[r:r + 1], noise[r:r + 1, :sampler.noise_width(50257)])
                 for r, sampler in enumerate(rows)]
        assert torch.equal(together, torch.cat(alone))


def test_chunked_row_reductions_agree_with_torch():
    rows = torch.randn(3, 1300).round(decimals=1)  # many ties, and a last chunk that needs padding
    assert torch.equal(chunked_argmax(rows), rows.argmax(-1, keepdim=True))  # the GPU's way, checked here
    for k in (1, 40, 600, 1300):
        assert torch.equal(chunk_tops(rows, k).topk(k).values, rows.topk(k).values)
    for k in (1, 40, 600, 1300, 5000):
        assert torch.equal(kth_largest(rows, torch.full((3, 1), k), k), rows.topk(min(k, 1300)).values[:, -1:])
    ks = torch.tensor([[0], [3], [1300]])  # a k per row; 0: no limit
    assert torch.equal(kth_largest(rows, ks, 1300)[:, 0], torch.stack([torch.tensor(float("-inf")),
                                                                         rows[1].topk(3).values[-1], rows[2].min()]))


def test_repetition_penalty_lowers_tokens_already_used():
    logits = torch.tensor([[2.0, 2.0, -1.0, -1.0]])
    seen = torch.tensor([[True, False, True, False]])
    assert torch.equal(penalise_repeats(logits, seen, torch.tensor([[2.0]])), torch.tensor([[1.0, 2.0, -2.0, -1.0]]))


def test_greedy_with_a_heavy_repetition_penalty_never_repeats(gpt):
    ids = torch.randint(0, 50257, (2, 5))
    out = generate(gpt, ids, 30, temperature=0, repetition_penalty=1e6)
    assert all(len(set(row.tolist())) == 35 for row in out)


def test_exponential_race_samples_the_distribution():
    """10,000 draws of one row of probabilities, the way generate draws them."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    generator = torch.Generator().manual_seed(0)
    noise = exponential_noise(torch.empty(10_000, 5), generator)
    picks = Sampler.alike(10_000, "cpu", 1.0, None, None, 1.0)(probs.log().expand(10_000, 5), None, noise)
    frequencies = torch.bincount(picks[:, 0], minlength=5) / 10_000
    assert torch.allclose(frequencies, probs, atol=0.015) and frequencies[4] == 0


def test_rows_that_end_early_only_pad(gpt):
    class EndsRowZero(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config, self.new_cache = gpt.config, gpt.new_cache

        def forward(self, ids, cache=None):
            logits = gpt(ids, cache)
            logits[0, :, EOT] += 1e4
            return logits

    out = generate(EndsRowZero(), torch.randint(0, 50257, (2, 4)), 10, temperature=0.8)
    assert out.shape == (2, 14)
    assert (out[0, 4:] == EOT).all() and (out[1, 4:] != EOT).all()


@pytest.mark.parametrize("options", [dict(temperature=0.9, top_k=50, top_p=0.95, repetition_penalty=1.3),
                                     dict(temperature=0.9, top_k=None, top_p=0.9, repetition_penalty=1.3)])
def test_compiled_decoding_equals_eager(gpt, options):
    """torch.compile of the fixed-shape step (CUDA graphs on a GPU) picks the very same tokens,
    across a context rebuild, with every sampling option on; a top p alone races over the whole
    vocabulary there, among its likeliest candidates in eager mode."""
    ids = torch.randint(0, 50257, (2, 50))
    eager = generate(gpt, ids, 30, generator=torch.Generator().manual_seed(0), **options)
    compiled = generate(gpt, ids, 30, generator=torch.Generator().manual_seed(0), compile=True, **options)
    assert eager.shape == (2, 80) and torch.equal(eager, compiled)


def test_streaming_delivers_the_same_text(gpt):
    pieces = []
    text = sample_text(gpt, "Über café", max_new_tokens=25, seed=1, stream=pieces.append)
    assert "".join(pieces) == text

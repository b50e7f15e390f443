"""The samplers against a plain reference: repeats penalised, temperature, top-k, then top-p, then
torch.multinomial. The eager `Sampler` and the captured step's `GraphSampler` sample its distribution."""
import pytest
import torch

from model.sample import GraphSampler, Sampler, exponential_noise

VOCAB = 1000  # past CANDIDATES, so that rows race both among their candidates and over the vocabulary
SETTINGS = [  # temperature, top_k, top_p, repetition penalty
    (1.0, None, None, 1.0), (0.8, 40, None, 1.0), (1.2, 5, 0.6, 1.3), (0.9, None, 0.9, 1.0),
    (1.0, 600, None, 1.0), (0.7, 600, 0.8, 1.5), (1.0, None, 0.3, 1.2),
]


def reference_distribution(logits: torch.Tensor, seen: torch.Tensor, temperature: float, top_k: int | None,
                           top_p: float | None, penalty: float) -> torch.Tensor:
    """A plain sampler's probabilities over the vocabulary, for one row."""
    logits = torch.where(seen & (logits > 0), logits / penalty, torch.where(seen, logits * penalty, logits))
    if top_k:
        logits = logits.masked_fill(logits < logits.topk(top_k).values[-1], float("-inf"))
    probs = (logits / temperature).softmax(-1)
    if top_p is not None:
        order = probs.argsort(descending=True)
        before = probs[order].cumsum(0) - probs[order]
        probs = probs.index_fill(0, order[before > top_p], 0.0)
    return probs / probs.sum()


def reference_draws(probs: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    return torch.multinomial(probs, n, replacement=True, generator=torch.Generator().manual_seed(seed))


def raced_distribution(sampler: Sampler, logits: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """The probabilities each row's race samples: its scores' softmax, over its candidates or the vocabulary."""
    race = sampler.race(logits, seen)
    probs = torch.zeros_like(logits)
    if race.scores is not None:
        probs = probs.scatter_add(1, race.ids, race.scores.softmax(-1))  # padding columns repeat an id, at 0
    if race.open_scores is not None:
        probs[race.open_rows] = race.open_scores.softmax(-1)
    return probs


def batch_of(kind: type[Sampler], settings: list[tuple]) -> Sampler:
    rows = [kind.alike(1, "cpu", *s) for s in settings]
    return kind(*(torch.cat([getattr(r, name) for r in rows]) for name in ("temperature", "top_k", "top_p", "penalty")))


@pytest.mark.parametrize("kind", [Sampler, GraphSampler])
@pytest.mark.parametrize("scale", [0.5, 3.0, 8.0])  # flat rows: nuclei past the candidates; peaked: within
def test_each_row_races_over_the_reference_distribution(kind, scale):
    generator = torch.Generator().manual_seed(int(scale * 10))
    logits = torch.randn(len(SETTINGS), VOCAB, generator=generator) * scale
    seen = torch.rand(len(SETTINGS), VOCAB, generator=generator) < 0.05
    raced = raced_distribution(batch_of(kind, SETTINGS), logits, seen)
    for row, settings in enumerate(SETTINGS):
        assert torch.allclose(raced[row], reference_distribution(logits[row], seen[row], *settings), atol=1e-6), settings


@pytest.mark.parametrize("kind", [Sampler, GraphSampler])
@pytest.mark.parametrize("settings", SETTINGS)
def test_draws_match_a_plain_multinomial_sampler_on_the_same_seed(kind, settings):
    """20,000 draws of one row each way, from one seed: their frequencies agree within sampling error."""
    draws, seed = 20_000, 7
    generator = torch.Generator().manual_seed(1)
    logits, seen = torch.randn(VOCAB, generator=generator) * 3, torch.rand(VOCAB, generator=generator) < 0.05
    sampler = kind.alike(draws, "cpu", *settings)
    noise = exponential_noise(torch.empty(draws, sampler.noise_width(VOCAB)), torch.Generator().manual_seed(seed))
    picks = sampler(logits.expand(draws, VOCAB), seen.expand(draws, VOCAB), noise)[:, 0]
    expected = reference_distribution(logits, seen, *settings)
    ours = torch.bincount(picks, minlength=VOCAB) / draws
    theirs = torch.bincount(reference_draws(expected, draws, seed), minlength=VOCAB) / draws
    assert (ours[expected == 0] == 0).all()  # never a token the filters leave out
    assert 0.5 * (ours - theirs).abs().sum() < 0.05  # total variation, both against the same distribution
    assert 0.5 * (ours - expected).abs().sum() < 0.05


@pytest.mark.parametrize("kind", [Sampler, GraphSampler])
def test_a_greedy_row_takes_the_reference_argmax(kind):
    generator = torch.Generator().manual_seed(3)
    logits, seen = torch.randn(4, VOCAB, generator=generator), torch.rand(4, VOCAB, generator=generator) < 0.2
    sampler = kind.alike(4, "cpu", 0.0, 40, None, 1.5)
    picks = sampler(logits, seen, torch.ones(4, sampler.noise_width(VOCAB)))[:, 0]
    expected = [reference_distribution(logits[r], seen[r], 1.0, None, None, 1.5).argmax() for r in range(4)]
    assert picks.tolist() == [int(e) for e in expected]


def test_the_graph_sampler_picks_the_eager_samplers_tokens_from_the_same_noise():
    generator = torch.Generator().manual_seed(5)
    for scale in (0.5, 8.0):
        logits = torch.randn(len(SETTINGS), VOCAB, generator=generator) * scale
        seen = torch.rand(len(SETTINGS), VOCAB, generator=generator) < 0.05
        eager, graph = batch_of(Sampler, SETTINGS), batch_of(GraphSampler, SETTINGS)
        noise = exponential_noise(torch.empty(len(SETTINGS), VOCAB), generator)
        assert torch.equal(eager(logits, seen, noise), graph(logits, seen, noise))

"""The whole pipeline: corpus -> train -> evaluate -> sample, then a short summary."""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows import forms
from flows.common import check_benchmarks, command, flow_config, given
from flows.corpus import check_inputs, corpus_flow
from flows.evaluate import evaluate_flow
from flows.generate import generate_flow
from flows.train import train_flow
from tasks.corpus.report import funnel


def summary(corpus: dict[str, Any], pipeline: list[dict[str, Any]], metrics: dict[str, float], texts: list[str]) -> str:
    """What a demo run shows at the end: the funnel, the val perplexity and the sample."""
    lines = ["", "=" * 72, "Corpus funnel:"]
    lines += [f"  {stage:<14} {count:>10,}" for stage, count in funnel(corpus["stats"], pipeline)]
    val = metrics["val"]
    lines += [f"Val perplexity: {val['eval/perplexity_strided']:.2f} (over {val['eval/tokens']:,.0f} tokens)",
              "Sample:", *texts, "=" * 72]
    return "\n".join(lines)


@forms.run_form
@flow(name="pipeline")  # the summary goes to the console, not only to the run log
def pipeline_flow(corpus: forms.Corpus = forms.pick("corpus"), model: forms.Model = forms.pick("model"),
                  trainer: forms.Trainer = forms.pick("trainer"), max_steps: forms.MaxSteps = None,
                  overrides: list[str] = ()) -> dict[str, Any]:
    """Build the corpus, train on it, evaluate the checkpoint and sample from it."""
    cfg = flow_config(pipeline_flow.fn, locals())
    with given(cfg):
        built = corpus_flow()
        trained = train_flow()
        metrics = evaluate_flow()
        samples = generate_flow()
        print(summary(built, cfg["corpus"]["pipeline"], metrics, samples))
    return {"corpus": built, "train": trained, "eval": metrics, "samples": samples}


def check(cfg: dict[str, Any]) -> None:
    """The corpus's inputs and the benchmarks evaluation will look for."""
    check_inputs(cfg)
    check_benchmarks(cfg["eval"]["benchmarks_dir"], cfg["eval"]["benchmarks"], "eval.benchmarks_dir")


main = command(pipeline_flow, check)


if __name__ == "__main__":
    main()

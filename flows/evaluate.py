"""Evaluation flow: strided perplexity of a checkpoint on the corpus val split."""
from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows import forms
from flows.common import cached, check_benchmarks, checkpoint_path, command, flow_config, token_dir
from model.benchmarks import results_table
from tasks.lm.evaluate import evaluate_task


def check_inputs(cfg: dict[str, Any]) -> dict[str, Any]:
    """`cfg` when its checkpoint and asked-for benchmarks are there, else a UserError in one line."""
    checkpoint_path(cfg)
    check_benchmarks(cfg["eval"]["benchmarks_dir"], cfg["eval"]["benchmarks"], "eval.benchmarks_dir")
    return cfg


@forms.run_form
@flow(name="evaluate", log_prints=True)
def evaluate_flow(model: forms.Model = forms.pick("model"), checkpoint: forms.Checkpoint = None,
                  corpus: forms.Corpus = forms.pick("corpus"), benchmarks_dir: forms.BenchmarksDir = None,
                  overrides: list[str] = ()) -> dict[str, Any]:
    """`checkpoint` (default: the last of the run) on the corpus's val split and the paper's benchmarks."""
    cfg = check_inputs(flow_config(evaluate_flow.fn, locals()))
    state = cached(evaluate_task, cfg)(checkpoint_path(cfg), str(token_dir(cfg)), cfg["eval"], return_state=True)
    result = state.result()
    table = evaluation_markdown(result, cfg["model"]["name"])
    create_markdown_artifact(table, key="evaluation", description="Zero-shot evaluation")
    if state.name != "Cached":  # a cached rerun measured nothing new: no new W&B run
        log_evaluation(result, table, cfg)
    print(table)
    return result


def evaluation_markdown(result: dict[str, Any], model_name: str) -> str:
    val = result["val"]
    text = f"Val perplexity: {val['eval/perplexity_strided']:.2f} over {val['eval/tokens']:,.0f} tokens\n\n"
    if result["benchmarks"]:
        text += results_table(result["benchmarks"], model_name) + "\n\n"
        text += "8-gram overlap with the training corpus: " + ", ".join(
            f"{k} {v:.2f}%" for k, v in result["contamination"].items()) + "\n"
    return text


def log_evaluation(result: dict[str, Any], table: str, cfg: dict[str, Any]) -> None:
    """The metrics and the table as a W&B run of job type "evaluate"."""
    logger = cfg["logger"]
    if not logger["enabled"]:
        return
    import wandb

    with wandb.init(project=logger["project"], name=f"eval-{cfg['run_name']}", job_type="evaluate",
                    dir=logger["save_dir"], mode=logger["mode"], group=cfg["model"]["name"]) as run:
        run.log({**result["val"], **{f"eval/{b}/{m}": v for b, ms in result["benchmarks"].items() for m, v in ms.items()},
                 **{f"contamination/{k}": v for k, v in result["contamination"].items()}})
        run.summary["evaluation_table"] = table


main = command(evaluate_flow, check_inputs)


if __name__ == "__main__":
    main()

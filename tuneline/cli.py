"""The `tuneline` command: run the pipeline, serve the champion, predict from the command line, and list, promote
or roll back stored models."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from components.config import ConfigError, load_params
from components.env import configure_environment
from components.stage import StageError


def _run(args: argparse.Namespace) -> int:
    from flows.pipeline import StageFailed, pipeline

    try:
        result = pipeline(root=str(args.root))
    except StageFailed as exc:
        print(f"\ntuneline run: the pipeline stopped: {exc}", file=sys.stderr)
        return 1
    params = load_params(args.root / "params.yaml")
    metrics = result.get("metrics")
    print("\n== Tuneline run finished ==")
    if metrics:
        model, baseline = metrics["model"]["macro"], metrics["baseline"]["macro"]
        print(f"test macro-F1:        model {model['f1']:.4f}   "
              f"{metrics.get('baseline_name', 'TF-IDF baseline')} {baseline['f1']:.4f}")
        print(f"test macro P / R:     model {model['precision']:.4f} / {model['recall']:.4f}   "
              f"accuracy {metrics['model']['accuracy']:.4f}   ({metrics['test_rows']} test rows)")
    verdict = result.get("verdict", {})
    print(f"gate:                 {'passed' if verdict.get('passed') else 'not passed'}"
          f", decision: {verdict.get('decision', '-')} ({params.paths.verdict})")
    if verdict.get("reason"):
        print(f"                      {verdict['reason']}")
    print(f"model tag:            {result.get('model_tag', '(none packaged)')}"
          f"   (BentoML store: {os.environ['BENTOML_HOME']})")
    from components import registry

    print(f"champion (served):    {registry.champion(params.package.model_name) or '(none yet)'}"
          "   (tuneline models lists them all)")
    here = Path(os.path.relpath(args.root))  # the image pipeline's paths are relative to images/
    print(f"model folder:         {here / params.paths.model}")
    show = "dvc metrics show" if here == Path(".") else f"cd {here} && dvc metrics show"
    print(f"metrics:              {here / params.paths.metrics} (also: {show})")
    print(f"serve it:             {_serve_command(here)}")
    return 0


def _serve_command(here: Path) -> str:
    """How to serve the champion of the pipeline in `here` (relative to the working directory)."""
    if here == Path("."):
        return "make serve"
    shipped = {Path("images"): "make serve-images", Path("audio"): "make serve-audio"}
    return shipped.get(here, f".venv/bin/tuneline --root {here} serve")


def _scratch(args: argparse.Namespace) -> int:
    from components.scratch import compare_with_scratch

    here = Path(os.path.relpath(args.root))
    os.chdir(args.root)  # params.yaml's paths are relative to its folder, as DVC runs the stages
    params = load_params("params.yaml")
    result = compare_with_scratch(params)
    pretrained, scratch, difference = result["pretrained"], result["scratch"], result["difference"]
    tried = ", ".join(f"{t['learning_rate']:g} (val {t['val_macro_f1']:.4f})" for t in result["learning_rates_tried"])
    from components import modalities

    items = modalities.for_params(params).items
    print(f"\n== Pretrained vs random weights, {result['test_rows']} test {items} ==")
    print(f"test macro-F1:        pretrained {pretrained['test_macro_f1']:.4f}   "
          f"random weights {scratch['test_macro_f1']:.4f}")
    print(f"test accuracy:        pretrained {pretrained['test_accuracy']:.4f}   "
          f"random weights {scratch['test_accuracy']:.4f}")
    print(f"difference:           {difference['difference']:+.4f} macro-F1, {difference['confidence']:.0%} interval "
          f"[{difference['low']:+.4f}, {difference['high']:+.4f}]: "
          f"{'pretraining wins clearly' if result['clear'] else 'not a clear difference'}")
    print(f"random weights:       same network, splits, epochs and recipe; learning rates tried {tried}; "
          f"best on val kept")
    print(f"written to:           {here / params.paths.scratch}")
    return 0


def _tune(args: argparse.Namespace) -> int:
    """The search (components/tune.py): its table, its best trial, and how to use it."""
    from components import tune

    here = Path(os.path.relpath(args.root))
    os.chdir(args.root)  # params.yaml's paths are relative to its folder, as DVC runs the stages
    params = load_params("params.yaml")
    summary = tune.run(params, trials=args.trials, timeout_s=args.timeout, study_name=args.study)
    counts = ", ".join(f"{count} {state.lower()}" for state, count in summary["trials"].items() if count)
    print(f"\n== Search {summary['study']}: {counts} (tune.trials {summary['trials_wanted']}; "
          f"storage {params.tune.storage}) ==")
    print(f"table of trials: {here / params.paths.tune_report} (rows: {here / params.paths.tune_trials}; plot: "
          f"dvc plots show {params.paths.tune_trials} -x trial -y val_macro_f1)")
    best, baseline, outcome = summary["best"], summary["baseline"], tune.outcome(summary)
    if outcome == "none":
        print("no trial finished; nothing to apply")
        return 1
    print(f"best: trial {best['trial']}, val macro-F1 {best['val_macro_f1']:.4f}: "
          f"{'params.yaml as it is (the default recipe)' if best['default'] else best['params']}")
    if outcome == "baseline":
        print(f"no trial beat the {baseline['name']} on val ({baseline['val_macro_f1']:.4f}): the gate would refuse "
              f"these params too; widen tune.space, raise tune.trials, or look at the data")
        return 1
    print(f"{baseline['name']} on val: {baseline['val_macro_f1']:.4f} (the gate compares them on test)")
    if outcome == "default":
        print("the default recipe (params.yaml as it is) was best: nothing to apply; `dvc repro` trains it")
        return 0
    settings = " ".join(f"-S '{key}={value}'" for key, value in best["params"].items())
    if args.apply:
        tune.apply("params.yaml", best["params"])
        print(f"written into {here / 'params.yaml'}; now `{_run_command(here)}` evaluates them on the test split and "
              f"the gate decides")
    else:
        print(f"try them as an experiment (evaluated on the test split, gated, never promoted):  dvc exp run "
              f"{settings}\nor write them into params.yaml:  tuneline tune --apply (resumes the study; no new trial "
              f"if it is complete)")
    return 0


def _serve(args: argparse.Namespace) -> int:
    params = load_params(args.root / "params.yaml")
    host = args.host or params.serve.host
    port = str(args.port or params.serve.port)
    command = [str(Path(sys.executable).parent / "bentoml"), "serve", "serving.service:TunelineService",
               "--host", host, "--port", port]
    from components import registry

    name = params.package.model_name
    tag = os.environ.get("TUNELINE_MODEL_TAG") or registry.champion(name) or f"{name}:latest"
    print(f"serving {tag} on http://{host}:{port} (Ctrl-C stops)", flush=True)
    os.environ.setdefault("TUNELINE_PARAMS", str(args.root / "params.yaml"))  # the service's limits and model name
    os.chdir(args.root)
    os.execv(command[0], command)
    return 0  # not reached


def _build(args: argparse.Namespace) -> int:
    """`bentoml build` of the champion (or --model), offline, with this project's params recorded in the Bento.

    The Bento records them as Bento arguments (`bentoml build --arg-file`), so it serves with the limits and the
    modality's settings it was built with, wherever it runs, whichever params.yaml its src/ holds.
    """
    import tempfile

    import bentoml
    import yaml

    from components import registry

    params_path = args.root / "params.yaml"
    params = load_params(params_path)
    name = params.package.model_name
    tag = args.model or registry.champion(name) or f"{name}:latest"
    try:
        tag = str(bentoml.models.get(tag).tag)
    except bentoml.exceptions.NotFound:
        print(f"tuneline build: no model {tag!r} in the BentoML store at {os.environ['BENTOML_HOME']}; run the "
              f"pipeline first (`{_run_command(Path(os.path.relpath(args.root)))}`) or give --model a stored tag",
              file=sys.stderr)
        return 1
    code_root = Path(__file__).resolve().parents[1]  # where serving/bentofile.yaml and the code live
    recorded = {"model": tag, "params": yaml.safe_load(params_path.read_text(encoding="utf-8"))}
    # Built with the split layout's two services recorded, so the Bento serves in either layout: auto picks by the
    # device of the machine it runs on (a Bento records its service graph when it is built).
    env = os.environ | {"TUNELINE_MODEL_TAG": tag, "TUNELINE_PARAMS": str(params_path),
                        "TUNELINE_SERVE_LAYOUT": "split"}
    # What serving this model imports beyond the bentofile's packages (an image or speech model's readers), pinned
    # as installed here, so that `bentoml containerize` installs them: asked of a fresh interpreter (serving/
    # requirements.py), since this one has imported the whole CLI.
    probe = subprocess.run([sys.executable, "-m", "serving.requirements", tag], cwd=code_root, env=env,
                           capture_output=True, text=True)
    if probe.returncode != 0:
        print(probe.stderr[-3000:], file=sys.stderr)
        print(f"tuneline build: loading {tag} to list what serving it imports failed (its output is above)",
              file=sys.stderr)
        return 1
    from serving.requirements import extra_packages

    bentofile = yaml.safe_load((code_root / "serving/bentofile.yaml").read_text(encoding="utf-8"))
    extra = extra_packages(json.loads(probe.stdout.strip().splitlines()[-1]), bentofile["python"]["packages"])
    bentofile["python"]["packages"] += extra
    with tempfile.TemporaryDirectory() as folder:
        arg_file = Path(folder) / "bento-args.yaml"
        arg_file.write_text(yaml.safe_dump(recorded, sort_keys=False), encoding="utf-8")
        bentofile_path = Path(folder) / "bentofile.yaml"
        bentofile_path.write_text(yaml.safe_dump(bentofile, sort_keys=False), encoding="utf-8")
        command = [str(Path(sys.executable).parent / "bentoml"), "build", "-f", str(bentofile_path),
                   "--arg-file", str(arg_file), "--output", "tag", "."]
        built = subprocess.run(command, cwd=code_root, env=env, capture_output=True, text=True)
    if built.returncode != 0:
        print(built.stdout[-3000:] + built.stderr[-3000:], file=sys.stderr)
        print(f"tuneline build: `bentoml build` failed for {tag} (its output is above)", file=sys.stderr)
        return 1
    bento = next(line.removeprefix("__tag__:") for line in built.stdout.splitlines() if line.startswith("__tag__:"))
    print(f"built Bento {bento} holding {tag}, with {params_path} recorded (BentoML store: "
          f"{os.environ['BENTOML_HOME']})\n"
          f"  packages beyond serving/bentofile.yaml's, for what serving it imports: {', '.join(extra) or 'none'}\n"
          f"  serve it from anywhere:  BENTOML_HOME={os.environ['BENTOML_HOME']} bentoml serve {bento}\n"
          f"  make an image (Docker and the package index at hand):  bentoml containerize {bento}")
    return 0


def _run_command(here: Path) -> str:
    """How to run the pipeline in `here` (relative to the working directory)."""
    shipped = {Path("."): "make run", Path("images"): "make run-images", Path("audio"): "make run-audio"}
    return shipped.get(here, f".venv/bin/tuneline --root {here} run")


def _monitor(args: argparse.Namespace) -> int:
    """Compare the champion's served rows of the window with its test predictions and its train and test inputs."""
    from components import monitor

    if args.hours is not None and args.hours <= 0:
        print(f"tuneline monitor: --hours must be above 0 (got {args.hours:g}); leave it out for monitor.window_hours",
              file=sys.stderr)
        return 2
    params = monitor.with_log_dir(load_params(args.root / "params.yaml"), os.environ.get("TUNELINE_MONITOR_DIR"))
    verdict = monitor.run(params, args.root, args.model, args.hours)
    here = Path(os.path.relpath(args.root))
    print(f"\n== Served traffic of {verdict['model']}: {'DRIFT' if verdict['drift'] else 'no drift'} ==")
    print(f"{verdict['served_rows']} served rows since {verdict['window']['since'] or 'the first logged row'} "
          f"(log: {verdict['window']['log_dir']})")
    for name, result in verdict["signals"].items():
        print(f"  {name:<24} {result['test']:<20} p = {result['p_value']:<10.3g} effect {result['effect']:.4f}"
              f"   {'DRIFT' if result['drift'] else 'ok'}")
    print(verdict["reason"])
    print(f"verdict: {here / params.monitor.verdict}   report: {here / params.monitor.report}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from components import registry

    name = load_params(args.root / "params.yaml").package.model_name
    models = registry.stored_models(name)
    if not models:
        print(f"no {name} models in the BentoML store at {os.environ['BENTOML_HOME']}; run `make run` first")
        return 0
    print(f"{'':2}{'tag':<36}{'created (UTC)':<27}{'test macro-F1':>14}  {'decision':<9} base model")
    for model in models:
        f1 = f"{model.test_macro_f1:.4f}" if model.test_macro_f1 is not None else "-"
        print(f"{'*' if model.champion else ' ':2}{model.tag:<36}{model.created:<27}{f1:>14}  "
              f"{model.decision or '-':<9} {model.base_model or '-'}")
    print("\n* = champion (served by `make serve`).  History:")
    for event in registry.history(name)[-10:]:
        print(f"  {event['at']}  {event['event']:<8} {event['tag']}  (was {event['previous']}; by {event['by']}): "
              f"{event['reason']}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from components import registry

    name = load_params(args.root / "params.yaml").package.model_name
    previous = registry.set_champion(name, args.tag, "promote", args.reason or "promoted by hand")
    print(f"{registry.champion(name)} is the champion (was {previous}); restart `make serve` to serve it")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from components import registry

    name = load_params(args.root / "params.yaml").package.model_name
    previous = registry.champion(name)
    tag = registry.rollback(name, args.tag)
    print(f"{tag} is the champion again (was {previous}); restart `make serve` to serve it")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import bentoml

    from components import modalities, registry

    params = load_params(args.root / "params.yaml")
    name = params.package.model_name
    tag = args.model or registry.champion(name) or f"{name}:latest"
    try:
        model = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        print(f"tuneline predict: no model {tag!r} in the BentoML store at {os.environ['BENTOML_HOME']}; "
              "run `make run` first", file=sys.stderr)
        return 1
    items = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not items:
        print("tuneline predict: give texts (or image files) as arguments or one per line on stdin", file=sys.stderr)
        return 2
    modality = modalities.for_model(model.path)
    classifier = modality.load_predictor(Path(model.path))
    for item, prediction in zip(items, classifier.predict(items), strict=True):
        print(json.dumps({modality.column: item, "label": prediction.label,
                          "probability": round(prediction.probability, 6),
                          "probabilities": {k: round(v, 6) for k, v in prediction.probabilities.items()}}))
    return 0


def _prefect_server(port: int, home: Path) -> tuple[subprocess.Popen | None, str]:
    """A Prefect server on 127.0.0.1:port: the one already answering there, or a new one (its log in PREFECT_HOME)."""
    import httpx

    url = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    if healthy():
        return None, url
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "server.log"
    print(f"starting a Prefect server on 127.0.0.1:{port} (log: {log_path})", flush=True)
    with open(log_path, "ab") as log_file:
        server = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
                                   "127.0.0.1", "--port", str(port)], stdout=log_file, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    deadline = time.monotonic() + 120
    while not healthy():
        if server.poll() is not None or time.monotonic() > deadline:
            server.terminate()
            raise StageError(f"the Prefect server did not start (see {log_path}); is port {port} taken? "
                             "Use --port, or set PREFECT_API_URL to a running server")
        time.sleep(0.5)
    return server, url


def _schedule(args: argparse.Namespace) -> int:
    params = load_params(args.root / "params.yaml")
    server, url = None, os.environ.get("PREFECT_API_URL")
    if not url:
        server, url = _prefect_server(args.port, Path(os.environ["PREFECT_HOME"]))
        os.environ["PREFECT_API_URL"] = url
    from flows.scheduled import FLOW_NAME, serve_deployment

    name = f"{FLOW_NAME}/{params.schedule.deployment}"
    print(f"deployment {name}: cron '{params.schedule.cron}' ({params.schedule.timezone}), one run at a time\n"
          f"  Prefect API {url}; UI {url.removesuffix('/api')}\n"
          f"  drop labelled files into {params.paths.incoming}/; run now: prefect deployment run '{name}'\n"
          f"  runs are recorded in {params.paths.runs}/; Ctrl-C stops (the schedule is paused)", flush=True)
    try:
        serve_deployment(args.root, params)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line: `tuneline run | serve | build | monitor | predict | models | promote | rollback | schedule |
    scratch`."""
    parser = argparse.ArgumentParser(prog="tuneline", description=__doc__)
    parser.add_argument("--root", type=Path, default=Path("."), help="project root (holds params.yaml, dvc.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run the whole pipeline as a Prefect flow (only stale DVC stages run)")
    serve = commands.add_parser("serve", help="serve the champion over HTTP (BentoML)")
    serve.add_argument("--host", help="bind address (default: serve.host in params.yaml)")
    serve.add_argument("--port", type=int, help="port (default: serve.port in params.yaml)")
    predict = commands.add_parser("predict", help="classify texts (or image files) with the champion (or --model)")
    predict.add_argument("texts", nargs="*", help="texts, or image files for an image model, to classify (default: "
                         "one per line on stdin)")
    predict.add_argument("--model", help="BentoML model tag (default: the champion)")
    build = commands.add_parser("build", help="build a Bento of the champion (or --model) offline, recording this "
                                "project's params in it")
    build.add_argument("--model", help="BentoML model tag (default: the champion)")
    watch = commands.add_parser("monitor", help="test the champion's served traffic for drift against its training "
                                "and test data (HTML report, JSON verdict)")
    watch.add_argument("--hours", type=float, help="the window: rows served in the last N hours (default: "
                       "monitor.window_hours)")
    watch.add_argument("--model", help="BentoML model tag whose rows are compared (default: the champion)")
    commands.add_parser("models", help="list the stored models with their test metrics; mark the champion")
    promote = commands.add_parser("promote", help="make a stored model the champion (logged)")
    promote.add_argument("tag", help="its BentoML tag, as `tuneline models` lists it")
    promote.add_argument("--reason", help="why, for the history")
    rollback = commands.add_parser("rollback", help="make the previous champion (or TAG) the champion again")
    rollback.add_argument("tag", nargs="?", help="a stored model's tag (default: the champion before this one)")
    commands.add_parser("scratch", help="images: train the same network from random weights on the same splits and "
                        "compare its test macro-F1 with the pipeline's pretrained model")
    tune = commands.add_parser("tune", help="search params (tune.space) with Optuna on the val split; resumable, "
                               "and several processes on one tune.storage split the trials")
    tune.add_argument("--trials", type=int, help="finished trials the study should hold (default tune.trials)")
    tune.add_argument("--timeout", type=float, help="seconds after which no new trial starts (default tune.timeout_s)")
    tune.add_argument("--study", help="the study's name in the storage (default tune.study, else package.model_name)")
    tune.add_argument("--apply", action="store_true", help="write the best trial's params into params.yaml")
    schedule = commands.add_parser("schedule", help="serve the scheduled retraining deployment (schedule.cron); "
                                   "starts a local Prefect server unless PREFECT_API_URL is set")
    schedule.add_argument("--port", type=int, default=4200, help="the local Prefect server's port (default 4200)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tuneline` console script."""
    args = build_parser().parse_args(argv)
    args.root = args.root.resolve()
    configure_environment(args.root)
    # Tuneline's own progress at INFO; the libraries' chatter (HTTP calls to Prefect's API, DVC hints) only when it
    # is a warning. Prefect's flow and task logs have their own handlers and stay visible.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in ("components", "flows", "tuneline"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        load_params(args.root / "params.yaml")
        commands = {"run": _run, "serve": _serve, "build": _build, "monitor": _monitor, "predict": _predict,
                    "models": _models, "promote": _promote, "rollback": _rollback, "schedule": _schedule,
                    "scratch": _scratch, "tune": _tune}
        return commands[args.command](args)
    except ConfigError as exc:
        print(f"tuneline {args.command}: {exc}", file=sys.stderr)
        return 2
    except StageError as exc:
        print(f"tuneline {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

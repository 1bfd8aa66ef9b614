"""speechlm pack: make a self-contained model dir (weights, vocabulary, tokenizers, tasks, model card).

The format is :mod:`speechlm.models.model_dir`'s; the card is :mod:`speechlm.models.model_card`'s."""
from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import yaml

log = logging.getLogger("speechlm.pack")

#: how the model card's refit line starts (an export from a packed dir carries it over)
REFIT_LINE = "Length head refit"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exp-dir", required=True, help="training run dir (exp/<tag>)")
    p.add_argument("--out-dir", required=True, help="model dir to write")
    p.add_argument("--checkpoint", default="final",
                   help="'final' (the run's average if it made one, else its best checkpoint by validation loss), "
                        "'latest', 'average' (of the --average best checkpoints) or a checkpoint dir")
    p.add_argument("--average", type=int, default=3, help="checkpoints averaged with --checkpoint average")
    p.add_argument("--decode-config", help="decode YAML stored as the model's default decoding options "
                   "(used by speechlm.load and by speechlm decode without --decode-config)")
    p.add_argument("--voices-dir",
                   help="speaker prompts to ship with the model: the dir's <name>.wav files (each with its "
                        "<name>.phn alignment where there) go to voices/; `speechlm serve` offers them by name, "
                        "and lm.tts(text) of a model whose TTS takes a prompt uses voices/default.wav, else the first")
    p.add_argument("--length-refit-steps", type=int, default=1500,
                   help="models with a length head: refit it on the frozen features of the training data "
                        "for this many steps (0: keep the head as trained)")
    p.add_argument("--length-refit-examples", type=int, default=1500,
                   help="training examples per data entry the refit reads")
    p.add_argument("--packed-dir",
                   help="a model dir packed from this run to copy as it is (the one that was decoded and "
                        "scored: no checkpoint choice, no refit), e.g. for --export")
    p.add_argument("--export", action="store_true",
                   help="make the dir upload-ready for a model hub (.gitattributes for the large files)")
    p.add_argument("--license", help="model card: the model's license (a Hugging Face license id, e.g. cc-by-4.0)")
    p.add_argument("--language", action="append", default=[],
                   help="model card: a language code (repeatable; default: the languages of the g2p tokenizers)")
    p.add_argument("--base-model", help="model card: the hub id of the model this one was fine-tuned from")
    p.add_argument("--dataset", action="append", default=[], help="model card: a hub dataset id (repeatable)")
    p.add_argument("--repo-id", help="model card: the hub repo the model goes to (its usage example downloads it)")
    p.add_argument("--base-dir",
                   help="resolve the run's relative tokenizer paths against this dir (default: the dir the run "
                        "was started in, as the run recorded it); the files are still checked against the "
                        "fingerprints taken at training time")


def copy_voices(src: Path, dst: Path) -> None:
    """``src/<name>.wav`` (and ``<name>.phn`` beside it) -> ``dst/``; a dir without wav files is an error."""
    wavs = sorted(src.glob("*.wav")) if src.is_dir() else []
    if not wavs:
        raise FileNotFoundError(f"--voices-dir {src}: no <name>.wav speaker prompts in it")
    dst.mkdir(parents=True, exist_ok=True)
    for wav in wavs:
        for f in (wav, wav.with_suffix(".phn")):
            if f.is_file():
                shutil.copy2(f, dst / f.name)
    log.info("pack: voices %s from %s", ", ".join(w.stem for w in wavs), src)


def run_base_dir(exp: Path) -> tuple[Path, str]:
    """The directory ``exp`` was trained from (its relative tokenizer paths are relative to it)
    and where that came from: the tokenizer fingerprints, env.json, the cwd line of cmd.sh, or
    (a run that recorded none) the current directory."""
    import json

    from speechlm.train.rundir import tokenizer_fingerprints

    stored = tokenizer_fingerprints(exp)
    if stored.get("base_dir"):
        return Path(stored["base_dir"]), f"{exp}/tokenizer_files.json"
    env = exp / "env.json"
    if env.is_file():
        try:
            cwd = json.loads(env.read_text(encoding="utf-8")).get("cwd")
        except ValueError:
            cwd = None
        if cwd:
            return Path(cwd), str(env)
    cmd = exp / "cmd.sh"
    if cmd.is_file():
        for line in cmd.read_text(encoding="utf-8").splitlines():
            if line.startswith("# cwd: "):
                return Path(line[len("# cwd: "):]), str(cmd)
    return Path.cwd(), "the current directory (the run recorded no start directory)"


def check_tokenizers(exp: Path, base: Path) -> None:
    """Refuse to pack tokenizer files other than the ones the run was trained with (a file of the
    same name in another recipe, a model retrained since); warn when the run has no fingerprints."""
    from speechlm.train.rundir import check_tokenizer_files, tokenizer_fingerprints

    if not tokenizer_fingerprints(exp):
        log.warning("%s has no tokenizer fingerprints (tokenizer_files.json; trained by an older speechlm): the "
                    "tokenizer files under %s are packed unchecked; make sure they are the ones it was trained with",
                    exp, base)
        return
    problems = check_tokenizer_files(exp, base)
    if problems:
        raise ValueError(
            f"{exp}: the tokenizer files are not the ones the run was trained with: " + "; ".join(problems)
            + ". Restore them (or pass --base-dir with the dir that holds them); packing them would give a "
            "model that turns text into the wrong ids")


def copy_tokenizers(exp: Path, out: Path, base: Path | None = None) -> None:
    """Copy each tokenizer's files into ``out/tokenizers/<name>/`` and rewrite tokenizers.yaml to
    them; relative paths of the run resolve against ``base`` (default: the current directory)."""
    from speechlm.tokenizers import load_tokenizer_specs, load_tokenizers, tokenizer_class

    specs = load_tokenizer_specs(exp / "tokenizers.yaml")
    toks = load_tokenizers(exp / "tokenizers.yaml", base_dir=base, confine=False)
    packed = {}
    for name, spec in specs.items():
        spec = dict(spec)
        cls = tokenizer_class(spec["type"])
        for key in getattr(cls, "path_options", ()):
            if key not in spec:
                continue
            src = Path(spec[key]) if base is None or Path(spec[key]).is_absolute() else base / spec[key]
            dst = out / "tokenizers" / name / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree(src, dst, dirs_exist_ok=True) if src.is_dir() else shutil.copy2(src, dst))
            spec[key] = str(dst.relative_to(out))
        for f in toks[name].files():  # e.g. files a tokenizer dir refers to
            if not any((out / "tokenizers" / name).rglob(Path(f).name)):
                (out / "tokenizers" / name).mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, out / "tokenizers" / name / Path(f).name)
        packed[name] = spec
    (out / "tokenizers.yaml").write_text(yaml.safe_dump(packed, sort_keys=False))


def phonemizer_languages(model_dir: Path) -> list[str]:
    """Languages the model's g2p tokenizers speak (espeak voices: ``en-us`` -> ``en``), for the card."""
    import inspect

    from speechlm.tokenizers import load_tokenizer_specs, tokenizer_class

    specs = load_tokenizer_specs(model_dir / "tokenizers.yaml")
    default = inspect.signature(tokenizer_class("g2p")).parameters["language"].default
    return sorted({str(s.get("language", default)).split("-")[0] for s in specs.values() if s.get("type") == "g2p"})


def card_info(exp: Path, model_dir: Path, out: Path, ckpt: Path, args: argparse.Namespace, notes: list[str]):
    """What the model card of ``model_dir`` (to become ``out``) says: the run's checkpoint, data,
    command and results, and the pack flags."""
    import json

    from speechlm.infer.pipeline import find_voices
    from speechlm.models.model_card import CardInfo

    cfg = yaml.safe_load((exp / "config.yaml").read_text()) if (exp / "config.yaml").is_file() else {}
    state = ckpt / "trainer_state.json"
    step = json.loads(state.read_text()).get("step") if state.is_file() else None
    data = cfg.get("data", cfg.get("train", {}).get("data", "")) if isinstance(cfg, dict) else ""
    return CardInfo(
        name=f"speechlm model: {exp.name}", license=args.license,
        language=args.language or phonemizer_languages(model_dir),
        base_model=args.base_model, datasets=args.dataset, repo_id=args.repo_id, path=str(out),
        checkpoint=f"`{ckpt.name}`" + (f" (step {step})" if step else ""),
        training_data=yaml.safe_dump(data) if data else "",
        command=(exp / "cmd.sh").read_text() if (exp / "cmd.sh").is_file() else "",
        results=(exp / "RESULTS.md").read_text() if (exp / "RESULTS.md").is_file() else "", notes=notes,
        voices=list(find_voices(model_dir)))


def refit_length(exp: Path, model_dir: Path, steps: int, examples: int) -> str:
    """Refit the packed model's length head on the run's training data (a model-card line; '' when
    the model has none)."""
    from speechlm.models.model_dir import read_config

    if steps <= 0 or not read_config(model_dir).length_weight:
        return ""
    from speechlm.data.dataset import DataSpec
    from speechlm.models import SpeechLM
    from speechlm.train.length_refit import refit_length_head

    from speechlm.train.config import upgrade_run_config

    run = upgrade_run_config(yaml.safe_load((exp / "config.yaml").read_text()) or {})
    specs = [DataSpec.parse(d) for d in run.get("data") or []]
    model = SpeechLM.from_pretrained(model_dir)
    precision = (run.get("train_config") or {}).get("precision", "fp32")  # the features as in training
    r = refit_length_head(model, specs, steps, examples, precision=precision)
    model.save_pretrained(model_dir)
    return (f"{REFIT_LINE} on {r['examples']} training examples ({steps} steps): mean absolute error "
            f"of the log length ratio {r['error_before']:.3f} -> {r['error_after']:.3f}.\n")


def main(args: argparse.Namespace) -> int:
    from speechlm.models.model_dir import LEGACY_CONFIG, MODEL_FILES, copy_model, is_model_dir
    from speechlm.train.checkpoint import select_checkpoint
    from speechlm.utils.fileio import write_text

    exp, out = Path(args.exp_dir), Path(args.out_dir)
    for name in ("tokenizers.yaml", "tasks"):
        if not (exp / name).exists():
            raise FileNotFoundError(f"{exp / name} is missing: is {exp} a `speechlm train` run dir?")
    if not args.packed_dir:  # check before any work: a refit takes minutes
        base, where = (Path(args.base_dir), "--base-dir") if args.base_dir else run_base_dir(exp)
        log.info("tokenizer paths of %s resolve against %s (from %s)", exp, base, where)
        check_tokenizers(exp, base)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if args.packed_dir:
        src = Path(args.packed_dir)
        if not is_model_dir(src):
            raise FileNotFoundError(f"{src} is not a packed model dir (no model.safetensors + config.json)")
        # the model part goes through copy_model (a packed dir of an older version is converted)
        skip = shutil.ignore_patterns("README.md", ".done", LEGACY_CONFIG, *MODEL_FILES)
        shutil.copytree(src, tmp, dirs_exist_ok=True, ignore=skip)
        copy_model(src, tmp)
        card = (src / "README.md").read_text() if (src / "README.md").is_file() else ""
        refit = "".join(line + "\n" for line in card.splitlines() if line.startswith(REFIT_LINE))
        ckpt = src
    else:
        ckpt = select_checkpoint(exp, args.checkpoint, args.average, tmp / ".averaged")
        copy_model(ckpt, tmp)
        shutil.rmtree(tmp / ".averaged", ignore_errors=True)
        refit = refit_length(exp, tmp, args.length_refit_steps, args.length_refit_examples)
        shutil.copytree(exp / "tasks", tmp / "tasks")
        copy_tokenizers(exp, tmp, base)
    if args.voices_dir:
        copy_voices(Path(args.voices_dir), tmp / "voices")
    if args.decode_config:
        from speechlm.config import load_yaml
        from speechlm.infer.config import decode_config_for

        options = load_yaml(args.decode_config) or {}
        model_tasks = {p.stem for p in (tmp / "tasks").glob("*.yaml")}
        for task in model_tasks:
            decode_config_for(options, task)  # a bad key fails here, not at the user's first decode
        # a recipe's decode YAML may hold options of tasks this model was not trained on (one file
        # for several runs); they would make the packed dir unloadable (its tasks are all it knows)
        others = sorted(set(options.get("tasks") or {}) - model_tasks)
        if others:
            log.warning("pack: %s: the options of tasks the model does not have are left out of its "
                        "decode.yaml: %s", args.decode_config, ", ".join(others))
            options["tasks"] = {t: o for t, o in options["tasks"].items() if t in model_tasks}
            write_text(tmp / "decode.yaml", yaml.safe_dump(options, sort_keys=False))
        else:
            shutil.copy2(args.decode_config, tmp / "decode.yaml")
    from speechlm.models.model_card import build_card, model_description
    from speechlm.tasks.template import load_template_file

    templates = {p.stem: load_template_file(p) for p in sorted((tmp / "tasks").glob("*.yaml"))}
    card = build_card(card_info(exp, tmp, out, ckpt, args, refit.splitlines()), templates, model_description(tmp))
    write_text(tmp / "README.md", str(card))
    if args.export:
        (tmp / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.model filter=lfs diff=lfs merge=lfs -text\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info("packed %s (%s) -> %s", exp, ckpt.name, out)
    return 0

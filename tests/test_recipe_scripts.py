"""The recipe shell layer: shellcheck, option parsing, stage bounds, job launchers, setup.sh, and
the `speechlm` command lines the stage script builds (recorded by a stand-in command)."""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EGS = ROOT / "egs"
TEMPLATE = EGS / "TEMPLATE" / "speechlm1"
UTILS = TEMPLATE / "utils"


def shell_scripts() -> list[Path]:
    """Every shell file under egs/ (by extension or bash shebang), symlinks excluded."""
    out = []
    for p in sorted(EGS.rglob("*")):
        if p.is_symlink() or not p.is_file() or any(part in ("data", "dump", "exp") for part in p.relative_to(EGS).parts):
            continue
        head = p.read_bytes()[:64]
        if p.suffix == ".sh" or head.startswith(b"#!/usr/bin/env bash") or head.startswith(b"#!/bin/bash"):
            out.append(p)
    return out


def run(cmd, cwd=None, env=None, check=False, **kw) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    kw.setdefault("timeout", 120)
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, check=check, **kw)


def make_recipe(tmp_path: Path, name: str = "toy") -> Path:
    """A new recipe through setup.sh (outside the repo tree, so its data/ stays in tmp)."""
    recipe = tmp_path / "egs" / name / "speechlm1"
    run([str(TEMPLATE / "setup.sh"), str(recipe)], check=True)
    return recipe


def write_exec(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_clean():
    scripts = shell_scripts()
    names = {p.relative_to(EGS).as_posix() for p in scripts}
    # The files the recipes depend on are all checked (a rename would silently skip them).
    for must in ("TEMPLATE/speechlm1/speechlm.sh", "TEMPLATE/speechlm1/utils/run.pl",
                 "TEMPLATE/speechlm1/utils/slurm.pl", "TEMPLATE/speechlm1/utils/parse_options.sh",
                 "TEMPLATE/speechlm1/path.sh", "TEMPLATE/speechlm1/setup.sh",
                 "mini_espeak/speechlm1/local/data.sh", "mini_espeak/speechlm1/run.sh"):
        assert must in names
    res = run(["shellcheck", "-s", "bash", *map(str, scripts)])
    assert res.returncode == 0, res.stdout + res.stderr


def option_names(script: Path) -> list[str]:
    text = script.read_text()
    block = text.split("# <options>", 1)[1].split("# </options>", 1)[0]
    return re.findall(r"^([A-Za-z_]\w*)=", block, flags=re.M)


def test_help_lists_every_option_and_stage():
    res = run([str(TEMPLATE / "speechlm.sh"), "--help"], cwd=TEMPLATE)
    assert res.returncode == 0, res.stderr
    names = option_names(TEMPLATE / "speechlm.sh")
    assert {"stage", "stop_stage", "ngpu", "num_nodes", "inference_nj", "train_data", "init_from"} <= set(names)
    for name in names:
        assert re.search(rf"^  --{name}\s", res.stdout, flags=re.M), f"--{name} missing from --help"
    # the comment of the option is the help text, the default is shown
    assert re.search(r"--stop_stage\s+last stage to run \[12\]", res.stdout)
    for n in range(1, 13):
        assert f"Stage {n}:" in res.stdout


def test_unknown_option_is_an_error():
    res = run([str(TEMPLATE / "speechlm.sh"), "--no_such_option", "1"], cwd=TEMPLATE)
    assert res.returncode != 0
    assert "unknown option --no_such_option" in res.stderr
    res = run([str(TEMPLATE / "speechlm.sh"), "positional"], cwd=TEMPLATE)
    assert res.returncode != 0 and "unexpected argument" in res.stderr


@pytest.mark.parametrize("args,message", [
    (["--stage", "0"], "--stage 0 is out of range"),
    (["--stop_stage", "13"], "--stop_stage 13 is out of range"),
    (["--stage", "7", "--stop_stage", "3"], "--stage 7 is after --stop_stage 3"),
    (["--stage", "two"], "--stage must be a non-negative integer"),
    (["--ngpu", "-1"], "--ngpu must be a non-negative integer"),
    (["--train_data", "asr:x:dump/train/asr"], "bad data spec 'asr:x:dump/train/asr'"),
    (["--task_set_suffix", "tts"], "bad --task_set_suffix entry 'tts'"),
])
def test_bad_options_fail_before_anything_runs(tmp_path, args, message):
    recipe = make_recipe(tmp_path)
    log = tmp_path / "calls.log"
    recorder = write_exec(tmp_path / "rec.sh", f'#!/usr/bin/env bash\necho "$*" >> {log}\n')
    res = run(["./speechlm.sh", "--speechlm", str(recorder), *args], cwd=recipe)
    assert res.returncode != 0
    assert message in res.stderr
    assert not log.exists(), "no stage may run when the options are bad"
    assert not (recipe / "data").exists()


def test_parse_options_booleans_and_equals_form(tmp_path):
    script = write_exec(tmp_path / "s.sh", """#!/usr/bin/env bash
set -euo pipefail
# <options>
flag=false     # a switch
name=abc       # a name
# </options>
. %s/parse_options.sh
echo "flag=${flag} name=${name} rest=$*"
""" % UTILS)
    res = run([str(script), "--flag", "true", "--name=x y", "pos"])
    assert res.stdout.strip() == "flag=true name=x y rest=pos"
    res = run([str(script), "--flag", "yes"])
    assert res.returncode != 0 and "takes true or false" in res.stderr
    res = run([str(script), "--name"])
    assert res.returncode != 0 and "needs a value" in res.stderr


# ---------------------------------------------------------------------------------------------
def test_run_pl_runs_all_jobs_with_a_log_each(tmp_path):
    res = run([str(UTILS / "run.pl"), "JOB=1:4", str(tmp_path / "log" / "job.JOB.log"),
               "echo", "hello", "JOB", ">", str(tmp_path / "out.JOB")])
    assert res.returncode == 0, res.stderr
    for i in range(1, 5):
        assert (tmp_path / f"out.{i}").read_text().strip() == f"hello {i}"
        log = (tmp_path / "log" / f"job.{i}.log").read_text()
        assert f"hello {i}" in log.splitlines()[0]  # the command is the log's first line
        assert "# Ended (code 0)" in log


def test_run_pl_fails_if_one_job_fails(tmp_path):
    res = run([str(UTILS / "run.pl"), "--max_jobs_run", "2", "JOB=1:3", str(tmp_path / "j.JOB.log"),
               "test", "JOB", "-ne", "2"])
    assert res.returncode != 0
    assert "1 of 3 jobs failed (jobs 2)" in res.stderr
    assert "# Ended (code 1)" in (tmp_path / "j.2.log").read_text()
    assert "# Ended (code 0)" in (tmp_path / "j.3.log").read_text()  # the others still ran
    # a single job: its exit code and output go to the log
    res = run([str(UTILS / "run.pl"), str(tmp_path / "one.log"), "exit", "3"])
    assert res.returncode != 0 and "# Ended (code 3)" in (tmp_path / "one.log").read_text()
    # a job log name without JOB would make the jobs overwrite each other's logs
    res = run([str(UTILS / "run.pl"), "JOB=1:2", str(tmp_path / "same.log"), "true"])
    assert res.returncode != 0 and "must contain JOB" in res.stderr


def test_run_pl_logs_each_jobs_peak_rss_and_bench_collects_it(tmp_path):
    # a job that holds ~120 MB: its log's accounting line says so, and bench/stage_rss.py reads it per stage
    script = write_exec(tmp_path / "hold.py", """#!/usr/bin/env python3
x = bytearray(120 * 1024 * 1024)
for i in range(0, len(x), 4096):
    x[i] = 1
""")
    recipe = tmp_path / "recipe"
    res = run([str(UTILS / "run.pl"), "JOB=1:2", str(recipe / "exp" / "m" / "decode_test_tts" / "logs" / "decode.JOB.log"),
               str(script)])
    assert res.returncode == 0, res.stderr
    log = (recipe / "exp" / "m" / "decode_test_tts" / "logs" / "decode.1.log").read_text()
    peak = int(re.search(r"peak_rss_mb=(\d+)", log).group(1))
    assert 120 <= peak < 400, log
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "stage_rss.py"), "--recipe-dir", str(recipe),
                          "--json", str(tmp_path / "rss.json")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / "rss.json").read_text())["rows"]
    assert [(r["stage"], r["jobs"]) for r in rows] == [("10 decoding", 2)] and rows[0]["peak_rss_mb"] >= 120


def test_run_pl_limits_parallel_jobs(tmp_path):
    # each job records how many jobs were running when it started; with a limit of 2 never more
    script = write_exec(tmp_path / "job.sh", f"""#!/usr/bin/env bash
touch {tmp_path}/running.$1; ls {tmp_path} | grep -c '^running' > {tmp_path}/seen.$1; sleep 0.3; rm {tmp_path}/running.$1
""")
    res = run([str(UTILS / "run.pl"), "--max_jobs_run", "2", "JOB=1:5", str(tmp_path / "l.JOB"), str(script), "JOB"])
    assert res.returncode == 0, res.stderr
    seen = [int((tmp_path / f"seen.{i}").read_text()) for i in range(1, 6)]
    assert max(seen) <= 2


def test_slurm_pl_passes_resources_to_srun(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "srun.calls"
    # a stand-in srun: records its options, then runs the command after them
    write_exec(bindir / "srun", f"""#!/usr/bin/env bash
opts=(); while [[ $1 == --* ]]; do opts+=("$1"); shift; done
echo "${{opts[*]}}" >> {calls}
exec "$@"
""")
    env = {"PATH": f"{bindir}:{os.environ['PATH']}"}
    res = run([str(UTILS / "slurm.pl"), "--gpu", "2", "--mem", "4G", "JOB=1:2",
               str(tmp_path / "s.JOB.log"), "echo", "job", "JOB"], env=env)
    assert res.returncode == 0, res.stderr
    lines = calls.read_text().splitlines()
    assert len(lines) == 2 and all("--gres=gpu:2" in x and "--mem=4G" in x for x in lines)
    assert "job 2" in (tmp_path / "s.2.log").read_text()
    res = run([str(UTILS / "slurm.pl"), "JOB=1:2", str(tmp_path / "f.JOB.log"), "false"], env=env)
    assert res.returncode != 0


def test_split_scp(tmp_path):
    src = tmp_path / "in.scp"
    src.write_text("".join(f"u{i:02d} x\n" for i in range(10)))
    outs = [tmp_path / f"o.{i}" for i in range(1, 4)]
    run([str(UTILS / "split_scp.sh"), str(src), *map(str, outs)], check=True)
    parts = [o.read_text() for o in outs]
    assert "".join(parts) == src.read_text()
    assert sorted(len(p.splitlines()) for p in parts) == [3, 3, 4]
    res = run([str(UTILS / "split_scp.sh"), str(src), *[str(tmp_path / f"p{i}") for i in range(11)]])
    assert res.returncode != 0 and "cannot split" in res.stderr


def test_setup_makes_symlinks_not_copies(tmp_path):
    recipe = make_recipe(tmp_path)
    for name in ("speechlm.sh", "path.sh", "cmd.sh", "utils"):
        link = recipe / name
        assert link.is_symlink(), name
        assert link.resolve() == (TEMPLATE / name).resolve()
        assert not os.path.isabs(os.readlink(link)), "links are relative so the tree can move"
    assert (recipe / "run.sh").is_file() and (recipe / "local" / "data.sh").is_file()
    res = run(["./run.sh", "--help"], cwd=recipe)
    assert res.returncode == 0 and "--stage" in res.stdout
    # the shipped recipes link the template the same way
    for corpus in ("mini_espeak", "librispeech", "ljspeech"):
        assert (EGS / corpus / "speechlm1" / "speechlm.sh").resolve() == (TEMPLATE / "speechlm.sh").resolve()
        assert (EGS / corpus / "speechlm1" / "utils").is_symlink()


# ---------------------------------------------------------------------------------------------
RECORDER = """#!/usr/bin/env bash
# stand-in for `speechlm`: records the command line and makes the outputs later stages read
echo "$*" >> {log}
cmd=$1; shift
get() {{ local want=$1; shift; while (( $# )); do [[ $1 == "$want" ]] && {{ echo "$2"; return; }}; shift; done; }}
case $cmd in
  score) r=$(get --results "$@"); echo "| set | metric |" >> "$r" ;;
  pack | decode) mkdir -p "$(get --out-dir "$@")" ;;
esac
"""


def test_stage_12_card_options_and_upload_command(tmp_path):
    recipe = make_recipe(tmp_path)
    log = tmp_path / "calls.log"
    recorder = write_exec(tmp_path / "rec.sh", RECORDER.format(log=log))
    res = run(["./speechlm.sh", "--speechlm", str(recorder), "--stage", "12", "--stop_stage", "12", "--tag", "t1",
               "--hub_repo", "me/tiny", "--hub_license", "cc-by-4.0"], cwd=recipe)
    assert res.returncode == 0, res.stderr
    assert log.read_text().splitlines() == ["pack --exp-dir exp/t1 --packed-dir exp/t1/packed --out-dir exp/t1/upload "
                                            "--export --repo-id me/tiny --license cc-by-4.0"]
    assert "to publish: hf upload me/tiny exp/t1/upload ." in res.stderr  # the CLI huggingface_hub installs


def test_stage_script_command_lines(tmp_path):
    recipe = make_recipe(tmp_path)
    log = tmp_path / "calls.log"
    recorder = write_exec(tmp_path / "rec.sh", RECORDER.format(log=log))
    (recipe / "conf" / "tasks").mkdir()
    init = tmp_path / "packed_old"
    init.mkdir()
    (init / "token_list.json").write_text("{}")
    res = run(["./speechlm.sh", "--speechlm", str(recorder), "--stage", "6", "--stop_stage", "12",
               "--train_data", "asr:a:dump/train/asr:1.0 tts:b:/x/dump/train/tts:0.5",
               "--test_sets", "test1 test2", "--decode_tasks", "asr", "--tag", "t1",
               "--task_dir", "conf/tasks", "--init_from", str(init), "--train_args", "--max-steps 3"],
              cwd=recipe)
    assert res.returncode == 0, res.stderr
    calls = log.read_text().splitlines()
    assert [c.split()[0] for c in calls] == ["vocab", "train", "pack", *["decode"] * 6, "score", "score", "pack"]
    assert calls[0] == f"vocab --tokenizers conf/tokenizers.yaml --tasks asr tts --out dump/token_list.json --extend {init}/token_list.json --task-dir conf/tasks"
    assert "Stage 7: none" in res.stderr  # stage 7 is empty; its number stays
    train = calls[1]
    assert "--data asr:a:dump/train/asr:1.0 --data tts:b:/x/dump/train/tts:0.5 --valid-data" in train
    assert "--train-config conf/train.yaml" in train
    assert f"--init-from {init}" in train and train.endswith("--max-steps 3")
    assert "--out-dir exp/t1" in train
    assert calls[2] == "pack --exp-dir exp/t1 --out-dir exp/t1/packed"
    # stage 10: --inference_nj shard jobs through run.pl (in any order), then the merge
    decode = "decode --model-dir exp/t1/packed --manifest-dir dump/test2/asr --out-dir exp/t1/decode_test2_asr --nj 2"
    assert sorted(calls[6:8]) == [f"{decode} --shard 1", f"{decode} --shard 2"] and calls[8] == decode
    assert (recipe / "exp" / "t1" / "decode_test2_asr" / "logs" / "decode.2.log").is_file()
    assert "--test-set test1 --task asr" in calls[9] and "--results exp/t1/RESULTS.md" in calls[9]
    assert calls[11] == "pack --exp-dir exp/t1 --packed-dir exp/t1/packed --out-dir exp/t1/upload --export"
    assert "| set | metric |" in res.stdout  # the results table is printed
    # stage 8 leaves a script that repeats the run from training on
    rerun = (recipe / "exp" / "t1" / "rerun.sh").read_text()
    assert "--stage 8" in rerun and "--tag t1" in rerun


def test_finished_stages_skip_themselves(tmp_path):
    recipe = make_recipe(tmp_path)
    log = tmp_path / "calls.log"
    recorder = write_exec(tmp_path / "rec.sh", RECORDER.format(log=log))
    ckpt = recipe / "exp" / "train_toy" / "checkpoints" / "step_1"
    ckpt.mkdir(parents=True)
    args = ["./speechlm.sh", "--speechlm", str(recorder), "--stage", "9", "--stop_stage", "11"]

    def commands():
        calls = [c.split()[0] for c in log.read_text().splitlines()] if log.exists() else []
        log.unlink(missing_ok=True)
        return calls

    assert run(args, cwd=recipe).returncode == 0
    assert commands() == ["pack", *["decode"] * 6, "score", "score"]  # 2 shards + merge per set
    res = run(args, cwd=recipe)
    assert res.returncode == 0 and commands() == [], "a finished run repeats nothing"
    assert "skipped" in res.stderr
    os.utime(ckpt, (ckpt.stat().st_atime + 10, ckpt.stat().st_mtime + 10))  # training went on
    (ckpt / "model.safetensors").write_text("newer")
    assert run(args, cwd=recipe).returncode == 0
    assert commands() == ["pack", *["decode"] * 6, "score", "score"]  # 2 shards + merge per set
    # a voice prompt newer than the packed model (--pack_voices) packs again
    voices = recipe / "voices"
    voices.mkdir()
    assert run([*args, "--pack_voices", "voices"], cwd=recipe).returncode == 0
    assert "pack --exp-dir exp/train_toy --out-dir exp/train_toy/packed --voices-dir voices\n" in log.read_text()
    assert commands()[0] == "pack"
    assert run([*args, "--pack_voices", "voices"], cwd=recipe).returncode == 0 and commands() == []
    (voices / "en-us.wav").write_bytes(b"RIFF")
    later = (voices / "en-us.wav").stat().st_mtime + 10
    os.utime(voices / "en-us.wav", (later, later))
    assert run([*args, "--pack_voices", "voices"], cwd=recipe).returncode == 0 and commands()[0] == "pack"


def test_stage5_tokenizes_in_shard_jobs_of_cpu_cmd_then_merges(tmp_path):
    """Tokenization shards are jobs of ${cpu_cmd} (run.pl here, slurm.pl on a cluster), then one
    merge call; a failed shard stops the stage and shows that job's log."""
    recipe = make_recipe(tmp_path)
    log = tmp_path / "calls.log"
    recorder = write_exec(tmp_path / "rec.sh", RECORDER.format(log=log))
    args = ["./speechlm.sh", "--speechlm", str(recorder), "--stage", "5", "--stop_stage", "5", "--nj", "3",
            "--tasks", "asr"]
    res = run(args, cwd=recipe)
    assert res.returncode == 0, res.stderr
    calls = log.read_text().splitlines()
    tok = "tokenize --manifest-dir dump/train/asr --tokenizers conf/tokenizers.yaml --nj 3"
    assert calls[0].startswith("prepare --task asr --data-dir dump/data/train")
    assert sorted(calls[1:4]) == [f"{tok} --shard {i}" for i in (1, 2, 3)] and calls[4] == tok
    assert len(calls) == 3 * 5  # train, dev, test: prepare, 3 shards, merge
    assert (recipe / "dump" / "train" / "asr" / "tokens" / "log" / "tokenize.3.log").is_file()
    failing = write_exec(tmp_path / "fail.sh", f"""#!/usr/bin/env bash
[[ " $* " == *" --shard 2 "* ]] && {{ echo "shard two broke"; exit 3; }}
exec {recorder} "$@"
""")
    res = run(["./speechlm.sh", "--speechlm", str(failing), *args[3:]], cwd=recipe)
    assert res.returncode != 0 and "shard two broke" in res.stderr
    assert "dump/train/asr/tokens/log/tokenize.2.log" in res.stderr


def test_a_task_reads_its_own_data_dirs(tmp_path):
    """--task_set_suffix "tts:_tts": the tts task is prepared, trained, validated, decoded and
    scored on data/<set>_tts (the mini recipe's TTS voice), asr on data/<set>."""
    recipe = make_recipe(tmp_path)
    log = tmp_path / "calls.log"
    recorder = write_exec(tmp_path / "rec.sh", RECORDER.format(log=log))
    res = run(["./speechlm.sh", "--speechlm", str(recorder), "--stage", "5", "--stop_stage", "11", "--nj", "1",
               "--inference_nj", "1", "--tasks", "asr tts", "--task_set_suffix", "tts:_tts", "--tag", "t"],
              cwd=recipe)
    assert res.returncode == 0, res.stderr
    calls = log.read_text().splitlines()
    prepared = [c.split()[4] for c in calls if c.startswith("prepare")]
    assert prepared == [f"dump/data/{s}" for s in ("train", "train_tts", "dev", "dev_tts", "test", "test_tts")]
    train = next(c for c in calls if c.startswith("train "))
    assert "--data asr:toy:dump/train/asr:1.0 --data tts:toy:dump/train_tts/tts:1.0" in train
    assert "--valid-data asr:toy:dump/dev/asr:1.0 --valid-data tts:toy:dump/dev_tts/tts:1.0" in train
    decoded = [c.split()[4] for c in calls if c.startswith("decode") and "--shard" not in c]
    assert decoded == ["dump/test/asr", "dump/test_tts/tts"]
    scored = [re.search(r"--test-set (\S+) --task (\S+)", c).groups() for c in calls if c.startswith("score")]
    assert scored == [("test", "asr"), ("test_tts", "tts")]


def test_stage_script_uses_torchrun_for_several_gpus(tmp_path):
    recipe = make_recipe(tmp_path)
    log = tmp_path / "calls.log"
    recorder = write_exec(tmp_path / "rec.sh", RECORDER.format(log=log))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    write_exec(bindir / "torchrun", f"""#!/usr/bin/env bash
echo "torchrun $*" >> {log}
while [[ $1 != --no-python ]]; do shift; done; shift; exec "$@"
""")
    # VIRTUAL_ENV set: path.sh does not activate the venv, whose real torchrun would come first
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "VIRTUAL_ENV": str(tmp_path)}
    res = run(["./speechlm.sh", "--speechlm", str(recorder), "--stage", "8", "--stop_stage", "8",
               "--ngpu", "4", "--num_nodes", "2", "--node_rank", "1", "--master_addr", "node0"],
              cwd=recipe, env=env)
    assert res.returncode == 0, res.stderr
    calls = log.read_text().splitlines()
    assert calls[0].startswith("torchrun --nnodes 2 --nproc_per_node 4 --node_rank 1 --master_addr node0")
    assert calls[1].startswith("train --data asr:toy:dump/train/asr:1.0 --data tts:toy:dump/train/tts:1.0 ")
    res = run(["./speechlm.sh", "--speechlm", str(recorder), "--stage", "8", "--stop_stage", "8",
               "--num_nodes", "2", "--node_rank", "2"], cwd=recipe, env=env)
    assert res.returncode != 0 and "--node_rank 2 must be below --num_nodes 2" in res.stderr


def test_failed_training_shows_its_log(tmp_path):
    recipe = make_recipe(tmp_path)
    calls = tmp_path / "calls.log"
    failing = write_exec(tmp_path / "fail.sh", "#!/usr/bin/env bash\n"
                         f"echo \"$*\" >> {calls}; echo 'boom: bad config key' >&2; exit 3\n")
    res = run(["./speechlm.sh", "--speechlm", str(failing), "--stage", "8", "--stop_stage", "9"], cwd=recipe)
    assert res.returncode != 0
    assert "boom: bad config key" in res.stderr and "exp/train_toy/logs/train.log" in res.stderr
    assert [c.split()[0] for c in calls.read_text().splitlines()] == ["train"], "stage 9 must not run after a failure"


@pytest.mark.parametrize("corpus,option", [("mini_espeak", "--num_utts"), ("librispeech", "--librispeech_dir"),
                                           ("ljspeech", "--ljspeech_dir")])
def test_local_data_sh_help(corpus, option):
    recipe = EGS / corpus / "speechlm1"
    res = run(["local/data.sh", "--help"], cwd=recipe)
    assert res.returncode == 0 and re.search(rf"^  {option}\s", res.stdout, flags=re.M)
    assert res.stdout.splitlines()[0], "the script's header comment comes first"
    res = run(["local/data.sh", "--bogus", "1"], cwd=recipe)
    assert res.returncode != 0 and "unknown option --bogus" in res.stderr


def test_path_sh_finds_the_toolkit_from_a_recipe_anywhere(tmp_path):
    """path.sh activates the checkout's .venv, where tools/install.sh installed speechlm (editable):
    the package comes from the env, not from the checkout put on PYTHONPATH."""
    recipe = make_recipe(tmp_path)  # outside the repository: path.sh is a link into it
    res = run(["bash", "-c", '. ./path.sh && echo "$SPEECHLM_ROOT" "${PYTHONPATH:-unset}" && '
               'python3 -c "import speechlm, sys; print(speechlm.__file__)"'],
              cwd=recipe, env={"VIRTUAL_ENV": "", "PYTHONPATH": ""})
    assert res.returncode == 0, res.stderr
    root, pythonpath, module = res.stdout.split()
    assert Path(root) == ROOT and Path(module).is_relative_to(ROOT)
    assert pythonpath == "unset" and "cannot import" not in res.stderr

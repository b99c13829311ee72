"""What `pip install biograd` alone gives: the library without the command line's extras, and
a one-line error naming the extra where one is missing."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import biograd

ROOT = Path(__file__).resolve().parents[1]

#: Every module of the train and detect extras (Pillow comes with torchvision), made
#: unimportable in a fresh interpreter.
BLOCK = textwrap.dedent("""
    import sys

    BLOCKED = {"yaml", "sklearn", "matplotlib", "tqdm", "tensorboard", "pycocotools", "scipy"}
    for name in BLOCKED:  # as if not installed: import fails, importlib's find_spec says None
        sys.modules[name] = None
""")


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_the_library_needs_no_extra():
    result = run("""
        import torch, torchvision, biograd
        model = biograd.convert(torchvision.models.resnet18(num_classes=4), "ss", last="bp")
        x = torch.randn(2, 3, 32, 32)
        torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1])).backward()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        handle = biograd.attach(opt, model)
        opt.step()
        assert biograd.weight_angles(model) and biograd.gradient_angles(
            model, (x, torch.tensor([0, 1])))
        print("ok")
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_the_spiking_libraries_are_imported_only_for_their_nets():
    result = run("""
        import sys, torch, biograd
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(),
                                    torch.nn.Linear(2 * 4 * 4, 3))
        biograd.convert(model, "dfa")
        model(torch.randn(2, 1, 6, 6)).sum().backward()
        print(biograd.report(model))
        biograd.unconvert(model)
        loaded = sorted(m for m in ("snntorch", "spikingjelly") if m in sys.modules)
        assert not loaded, loaded
        print("ok")
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_help_and_the_model_list_never_import_the_spiking_libraries():
    result = run("""
        import sys
        from biograd.cli import main
        from biograd.models import list_models, model_info
        assert "spiking_cnn" in list_models() and model_info("spiking_cnn").summary
        for argv in (["--help"], ["train", "--help"], ["compare", "--help"]):
            try:
                main(argv)
            except SystemExit as done:
                assert done.code == 0, (argv, done.code)
        loaded = sorted(m for m in ("snntorch", "spikingjelly") if m in sys.modules)
        assert not loaded, loaded
        print("ok")
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


#: The spiking extra's modules made unimportable, as for the train extra's (BLOCK).
NO_SPIKING = 'import sys; sys.modules["spikingjelly"] = sys.modules["snntorch"] = None\n'


@pytest.mark.parametrize("command", [["train"], ["compare", "--rules", "bp,fa"]])
def test_spiking_cnn_names_the_spiking_extra_before_it_starts(tmp_path, command):
    argv = [*command, "--model", "spiking_cnn", "--out", str(tmp_path / "run")]
    result = subprocess.run([sys.executable, "-c", NO_SPIKING + textwrap.dedent(f"""
        from biograd.cli import main
        raise SystemExit(main({argv!r}))
    """)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and "spiking_cnn needs spikingjelly" in err[0], err
    assert "pip install 'biograd[spiking]'" in err[0], err
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def test_building_spiking_cnn_without_the_extra_is_one_model_error():
    result = subprocess.run([sys.executable, "-c", NO_SPIKING + textwrap.dedent("""
        from biograd.models import ModelError, build_model
        try:
            build_model("spiking_cnn", num_classes=10, in_channels=1, image_size=8)
        except ModelError as err:
            print(err)
    """)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == ("spiking_cnn needs spikingjelly, which comes with "
                                     "biograd's spiking extra: pip install 'biograd[spiking]'")


@pytest.mark.parametrize(("argv", "extra"), [
    (["train"], "train"), (["compare", "--rules", "bp"], "train"), (["eval", "runs/x"], "train"),
    (["detect", "--data", "fake"], "train")])
def test_the_command_line_names_the_extra_it_needs(argv, extra):
    result = run(f"""
        from biograd.cli import main
        raise SystemExit(main({argv!r}))
    """)
    assert result.returncode == 2, result.stderr[-2000:]
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and f"pip install 'biograd[{extra}]'" in err[0], err


@pytest.mark.parametrize("command", [["detect"], ["compare", "--task", "detection"]])
def test_detection_names_the_detect_extra_before_it_starts(tmp_path, command):
    argv = [*command, "--data", "fake", "--out", str(tmp_path / "run")]
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        sys.modules["pycocotools"] = None
        from biograd.cli import main
        raise SystemExit(main({argv!r}))
    """)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pip install 'biograd[detect]'" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


@pytest.mark.parametrize(("argv", "expected"), [
    (["--version"], biograd.__version__), (["rules"], "| `ss` |"), (["train", "--help"], "--rule")])
def test_help_version_and_rules_need_no_extra(argv, expected):
    result = run(f"""
        from biograd.cli import main
        raise SystemExit(main({argv!r}))
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout


def test_the_wheel_ships_configs_license_and_type_marker(tmp_path):
    import shutil
    import zipfile

    source = tmp_path / "src"  # a copy: setuptools writes build/ beside the project
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "runs", "build", "*.egg-info", "__pycache__", ".*_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path), str(source)], check=True,
                   capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("biograd-*.whl")
    assert wheel.name.startswith(f"biograd-{biograd.__version__}-")  # one source: __init__
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "biograd/py.typed" in names
    assert any(n.endswith("/LICENSE") for n in names)
    shipped = {n for n in names if n.startswith("biograd/configs/")}
    here = {str(p.relative_to(ROOT)) for p in (ROOT / "biograd" / "configs").rglob("*.yaml")}
    assert shipped == here and len(here) >= 24


def test_config_names_an_installed_recipe(capsys):
    from biograd.config import bundled_configs, find_config

    assert "imagenet/resnet18-ss" in bundled_configs()
    assert find_config("imagenet/resnet18-ss").name == "resnet18-ss.yaml"
    from biograd.cli import main

    assert main(["train", "--config", "imagenet/resnet18-sss"]) == 2
    err = capsys.readouterr().err
    assert "no installed recipe has that name" in err and "imagenet/" in err

"""speechlm: an open toolkit for speech language models and voice agents."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def requirements(name: str) -> list[str]:
    lines = (HERE / "tools" / "requirements" / f"{name}.txt").read_text().splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]


# Every tools/requirements/<part>.txt is a part of the toolkit users get, except test.txt
# (extra "test") and nodeps.txt (installed with --no-deps by tools/install.sh).
parts = sorted(
    p.stem for p in (HERE / "tools" / "requirements").glob("*.txt") if p.stem not in ("test", "nodeps")
)

setup(
    name="speechlm",
    version="0.1.0",
    description="An open toolkit for speech language models and voice agents",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["speechlm", "speechlm.*"]),
    install_requires=[r for part in parts for r in requirements(part)],
    extras_require={"test": requirements("test")},
    entry_points={"console_scripts": ["speechlm = speechlm.cli:main"]},
    include_package_data=True,
    # files read at run time from inside the package (the rest of conf/ is the checkout's: issue 15)
    package_data={"speechlm.serve": ["static/*"], "speechlm.agent": ["phrasings/*.yaml"]},
)

"""The README's set-up commands are the ones CI runs."""
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    demo, tests = blocks[0].splitlines()                # the two set-up commands at the top
    test_cmd = tests.split(" && ", 2)[2]                # after venv creation and activation
    assert test_cmd.endswith("python -m pytest") and test_cmd in (ROOT / ".ci" / "run").read_text()
    assert demo.startswith("python3 -m venv") and "lstmkit lm train" in demo

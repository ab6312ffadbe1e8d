"""The sytest ratchet's bookkeeping (scripts/conformance.sh runs it).

  compare RUN BASELINE OUT         prints the test files of the baseline's tests that did not pass
                                   in RUN; writes OUT/passing.txt and OUT/newly-passing.txt
  recheck RUN RERUN BASELINE OUT   fails (exit 1) for the baseline's tests that passed neither in
                                   RUN nor in RERUN (RERUN may be "": no second run)

A test is named as sytest's TAP names it, without its "(N subtests)" count and a trailing
issue tag such as "(SYN-205)" or "(riot-web/3462)", as tests/conformance/sytest-passing.txt
lists them.
"""

import re
import sys


def name_of(text):
    text = re.sub(r" \(\d+ subtests\)$", "", text.strip())
    return re.sub(r" \([^\s()]+\)$", "", text)


def results(run):
    """(passing names, {name: test file}) of a run directory written by the kit's run.sh."""
    passing, files, numbered = set(), {}, {}
    current = None
    with open(f"{run}/progress.log", errors="replace") as progress:
        for line in progress:
            m = re.match(r"^(tests/\S+\.pl):", line)
            if m:
                current = m.group(1)
            m = re.match(r"^\s+Test (\d+) ", line)
            if m and current:
                numbered[int(m.group(1))] = current
    with open(f"{run}/results.tap", errors="replace") as tap:
        for line in tap:
            m = re.match(r"^(not ok|ok) (\d+) (.*)$", line)
            if not m or "# skip" in line:
                continue
            name = name_of(m.group(3))
            files[name] = numbered.get(int(m.group(2)))
            if m.group(1) == "ok":
                passing.add(name)
    return passing, files


def baseline(path):
    with open(path) as f:
        return {line.strip() for line in f if line.strip()}


def main():
    command = sys.argv[1]
    if command == "compare":
        run, base, out = sys.argv[2:5]
        passing, files = results(run)
        expected = baseline(base)
        with open(f"{out}/passing.txt", "w") as f:
            f.writelines(f"{n}\n" for n in sorted(passing))
        with open(f"{out}/newly-passing.txt", "w") as f:
            f.writelines(f"{n}\n" for n in sorted(passing - expected))
        regressed = expected - passing
        for path in sorted({files[n] for n in regressed if files.get(n)}):
            print(path)
    elif command == "recheck":
        run, rerun, base, out = sys.argv[2:6]
        passing, _ = results(run)
        if rerun:
            passing |= results(rerun)[0]
        expected = baseline(base)
        regressed = sorted(expected - passing)
        with open(f"{out}/newly-passing.txt") as f:
            new = [line.strip() for line in f if line.strip()]
        print(f"conformance: {len(results(run)[0])} passed; {len(expected)} in the baseline; "
              f"{len(new)} newly passing (target/conformance/newly-passing.txt)")
        if regressed:
            print(f"conformance: {len(regressed)} regressions (passed before, failed twice now):")
            print("\n".join(f"  {n}" for n in regressed))
            sys.exit(1)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

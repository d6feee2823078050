"""Start-up hook that makes ``lm_eval --model lhama`` work from the harness's own command.

lm-evaluation-harness 0.4.x finds models only in its registry (it reads no entry points), so
``lhama lm-eval --install`` writes a ``.pth`` file into site-packages that runs this file when
Python starts. It imports nothing: it only watches for ``lm_eval.models`` to be imported and then
registers ``lhama`` as a lazy placeholder, so Python start-up stays as fast as before and lhama
is imported only when the harness actually loads the model.
"""

import importlib.abc
import importlib.util
import sys

TARGET = "lhama.eval.lm_eval_adapter:LhamaLM"


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "lm_eval.models":
            return None
        sys.meta_path.remove(self)  # find the real module without coming back here
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            from lm_eval.api.registry import model_registry

            if "lhama" not in model_registry:
                model_registry.register("lhama", target=TARGET)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    if not any(isinstance(f, _Finder) or type(f).__name__ == "_Finder" for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


install()

"""Ships the plugin's start-up hook (qwenvl_roi_plugin.pth) into site-packages.

A .pth file must sit at the top of site-packages, which pyproject metadata alone cannot express;
both the regular wheel (build_py) and the editable wheel (editable_wheel) get it.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = Path(__file__).parent / "qwenvl_roi_plugin.pth"


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        self.copy_file(str(PTH), str(Path(self.build_lib) / PTH.name))


class EditableWheelWithPth(editable_wheel):
    def _select_strategy(self, *args, **kwargs):
        strategy = super()._select_strategy(*args, **kwargs)

        class _WithPth:
            def __call__(self, wheel, files, mapping):
                strategy(wheel, files, mapping)
                wheel.writestr(PTH.name, PTH.read_bytes())

            def __enter__(self):
                strategy.__enter__()
                return self

            def __exit__(self, *exc):
                return strategy.__exit__(*exc)

        return _WithPth()


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})

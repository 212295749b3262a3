"""The built-in run configs, shipped as package data and found by `sealong.loop.config` through
`importlib.resources`.

A regular package, not a namespace portion: under setuptools' editable install, `importlib.resources.files`
on a namespace package raises NotADirectoryError (python/importlib_resources#311; seen on Python 3.11).
"""

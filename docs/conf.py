# Sphinx configuration for etcdwatch.
import os
import sys

sys.path.insert(0, os.path.abspath('..'))

project = 'etcdwatch'
copyright = 'etcdwatch developers'
extensions = ['sphinx.ext.autodoc', 'sphinx.ext.viewcode']
master_doc = 'index'
exclude_patterns = ['_build']
html_theme = 'alabaster'
autodoc_member_order = 'bysource'

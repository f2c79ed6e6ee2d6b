# Sphinx configuration for etcdwatch.
import os
import sys

sys.path.insert(0, os.path.abspath('..'))


def _oslo_config_entry_point():
    """Make ``show-options:: etcdwatch`` work from a plain checkout.

    oslo.config's directive finds options through the package's
    ``oslo.config.opts`` entry point, which exists only once etcdwatch is
    installed.  Otherwise a throw-away distribution declaring the entry
    point of setup.cfg goes on sys.path for this build.
    """
    import atexit
    import configparser
    from importlib import metadata
    import shutil
    import tempfile

    group = 'oslo.config.opts'
    if any(ep.name == 'etcdwatch'
           for ep in metadata.entry_points(group=group)):
        return
    setup_cfg = configparser.ConfigParser()
    setup_cfg.read(os.path.join(os.path.dirname(__file__), '..',
                                'setup.cfg'))
    where = tempfile.mkdtemp(prefix='etcdwatch-docs-')
    atexit.register(shutil.rmtree, where, True)
    info = os.path.join(where, 'etcdwatch_docs_opts-0.dist-info')
    os.mkdir(info)
    with open(os.path.join(info, 'METADATA'), 'w') as f:
        f.write('Metadata-Version: 2.1\nName: etcdwatch-docs-opts\n'
                'Version: 0\n')
    declared = setup_cfg['entry_points'][group].strip()
    with open(os.path.join(info, 'entry_points.txt'), 'w') as f:
        f.write('[%s]\n%s\n' % (group, declared))
    sys.path.append(where)


_oslo_config_entry_point()

project = 'etcdwatch'
copyright = 'etcdwatch developers'
extensions = ['sphinx.ext.autodoc', 'sphinx.ext.viewcode',
              'oslo_config.sphinxext']
master_doc = 'index'
exclude_patterns = ['_build']
html_theme = 'alabaster'
autodoc_member_order = 'bysource'

"""AUTOMATIC1111's extension API as an adapter at Easel's edge (issue #23).

A1111 extensions import ``modules.scripts``, ``modules.script_callbacks``, ``modules.shared``,
``modules.processing`` and ``modules.images``. Those names are thin modules that delegate here;
this package maps them onto Easel's typed requests and its hook registry (``modules.hooks``):

- ``runtime``: which running app the adapters view (one binding, set when extensions load);
- ``options``: ``shared.opts`` (a view onto ``Services.settings``) and ``OptionInfo``;
- ``scripts``: ``Script``, ``AlwaysVisible``, ``basedir``;
- ``callbacks``: ``script_callbacks.on_*`` registered as hooks owned by the extension;
- ``processing``: the ``p`` object, ``process_images`` and ``Processed``;
- ``loader``: finding, preloading, loading, enabling and installing extensions.

The core never imports this package; ``Services`` only holds what ``loader`` loaded.
"""

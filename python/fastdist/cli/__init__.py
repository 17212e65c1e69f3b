"""The ``fastdist`` command line (the only place that prints or exits): ``main`` the entry and
error mapping, ``display`` the pull display, ``images`` and ``containers`` the commands,
``common`` what they share."""

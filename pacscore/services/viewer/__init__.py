"""The viewer door: OHIF at ``/viewer`` on pacscore's own origin, its login, and IHE
Invoke Image Display.

* :mod:`.install`: the pinned OHIF build, fetched with npm and verified;
* :mod:`.static`: its files, ``app-config.js`` and single-page routing;
* :mod:`.pages`: log in, log out, IHE Invoke Image Display;
* :mod:`.share`: share links; :mod:`.admin`: the page that makes and revokes them;
* :mod:`.routes`: the routes and their declared access, added to the DICOMweb app
  (``create_app(viewer=ViewerSettings(...))``).

Import the submodules (this package imports nothing: the DICOMweb app and the access
rules import each other's packages).
"""

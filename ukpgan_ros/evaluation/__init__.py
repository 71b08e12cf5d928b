"""``ukpgan eval``: metrics (``metrics``), evaluation pairs (``pairs``), the run (``run``) and
its report (``report``). Importing the package loads none of them; import the module you need."""

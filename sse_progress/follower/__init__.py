"""Reading a session from outside: ``follow()`` for programs, ``watch`` and ``sessions`` for terminals."""

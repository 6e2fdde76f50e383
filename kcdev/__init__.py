"""The logic behind kc-devenv's Invoke tasks, kept out of tasks.py so it can be tested."""

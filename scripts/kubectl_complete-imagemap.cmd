@echo off
rem kubectl's completion for plugins (kubectl 1.26+): `kubectl imagemap <TAB>` runs this with the
rem words typed after `imagemap`; the plugin next to it answers (cobra's __complete protocol).
"%~dp0kubectl-imagemap.exe" __complete %*

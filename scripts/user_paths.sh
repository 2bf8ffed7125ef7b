# Sourced by the entry points before they change directory: the data roots a user set in the
# environment ($PODD_DATA_ROOT, $PODD_CIFAR10_ROOT) become absolute, read from the folder the
# command was typed in, so `PODD_DATA_ROOT=../data ./run_all.sh` means ../data of that folder
# wherever the kit and its notebooks run later.
for _var in PODD_DATA_ROOT PODD_CIFAR10_ROOT; do
    _value="${!_var:-}"
    if [ -n "$_value" ] && [ "${_value#/}" = "$_value" ]; then
        if [ -d "$_value" ]; then
            export "$_var=$(cd -- "$_value" && pwd)"
        else
            export "$_var=$PWD/$_value"
        fi
    fi
done
unset _var _value

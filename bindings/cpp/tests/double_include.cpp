// The header is include-guarded and defines only inline entities: including
// it twice in one translation unit, and in several units of one program,
// must compile and link.
#include "cmdop.hpp"
#include "cmdop.hpp"

std::string_view cmdop_version_from_second_unit() { return cmdop::version(); }

# Debian's xsimd 8 package exports a target `xsimd` whose link interface names "xtl" without
# finding it, so every consumer would link a non-existent -lxtl. xsimd's headers need xtl only
# with XSIMD_ENABLE_XTL_COMPLEX, which q2n never sets: drop the dangling name.
if(TARGET xsimd AND NOT TARGET xtl)
  get_target_property(_q2n_xsimd_libs xsimd INTERFACE_LINK_LIBRARIES)
  if(_q2n_xsimd_libs STREQUAL "xtl")
    set_property(TARGET xsimd PROPERTY INTERFACE_LINK_LIBRARIES "")
  endif()
  unset(_q2n_xsimd_libs)
endif()

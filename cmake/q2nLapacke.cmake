# Finds LAPACKE, the C interface to LAPACK, for the optional dense eigensolver backend
# (q2n::lapack, DenseSolver::lapack). Defines the imported target q2n_lapacke when found and
# sets q2n_LAPACKE_FOUND. On Debian: liblapacke-dev, with libopenblas0-pthread for a fast
# LAPACK and BLAS behind it (the alternatives system points liblapack.so.3 there).
if(NOT TARGET q2n_lapacke)
  find_path(Q2N_LAPACKE_INCLUDE_DIR lapacke.h PATH_SUFFIXES lapacke openblas)
  find_library(Q2N_LAPACKE_LIBRARY NAMES lapacke)
  find_library(Q2N_LAPACK_LIBRARY NAMES lapack openblas)
  mark_as_advanced(Q2N_LAPACKE_INCLUDE_DIR Q2N_LAPACKE_LIBRARY Q2N_LAPACK_LIBRARY)
  if(Q2N_LAPACKE_INCLUDE_DIR AND Q2N_LAPACKE_LIBRARY AND Q2N_LAPACK_LIBRARY)
    add_library(q2n_lapacke INTERFACE IMPORTED)
    target_include_directories(q2n_lapacke INTERFACE ${Q2N_LAPACKE_INCLUDE_DIR})
    target_link_libraries(q2n_lapacke INTERFACE ${Q2N_LAPACKE_LIBRARY} ${Q2N_LAPACK_LIBRARY})
  endif()
endif()
if(TARGET q2n_lapacke)
  set(q2n_LAPACKE_FOUND TRUE)
else()
  set(q2n_LAPACKE_FOUND FALSE)
endif()

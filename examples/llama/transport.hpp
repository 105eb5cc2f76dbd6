#pragma once
/// \file transport.hpp
/// Message passing between the processes of a run (dist.hpp), declared here and defined by the
/// file a program links: dist_one.cpp (one process) or dist_mpi.cpp (MPI).

#include <cstddef>

namespace llama {

/// With one process only Session, rank(), size() and abort() are ever called.
namespace transport {
/// Holds the run's processes together from the start of main to its end (MPI_Init/Finalize).
struct Session {
  Session(int& argc, char**& argv);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
};
int rank();
int size();
/// `bytes` bytes at `data` from rank `root` to every rank.
void broadcast(void* data, std::size_t bytes, int root);
void send(const void* data, std::size_t bytes, int to, int tag);
void receive(void* data, std::size_t bytes, int from, int tag);
/// Every rank's `counts[r]` doubles into `all` at `offsets[r]`, on every rank.
void all_gather(const double* mine, int count, double* all, const int* counts, const int* offsets);
/// Ends the whole run: a failed rank must not leave the others waiting in a collective.
[[noreturn]] void abort(int code);
}  // namespace transport

}  // namespace llama

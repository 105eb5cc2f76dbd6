/// \file dist_mpi.cpp
/// The transport of an MPI run (q2n_llama_mpi): MPI_COMM_WORLD, blocking calls, raw bytes.
/// Counts are int in MPI, so long messages go in pieces of at most 1 GiB. A failed call ends the
/// job (MPI_COMM_WORLD's default error handler), so no return code needs checking.

#include "transport.hpp"

#include <mpi.h>

#include <algorithm>
#include <cstdlib>

namespace llama::transport {
namespace {
constexpr std::size_t kPiece = std::size_t{1} << 30;

int piece(std::size_t at, std::size_t bytes) { return static_cast<int>(std::min(kPiece, bytes - at)); }
}  // namespace

Session::Session(int& argc, char**& argv) { MPI_Init(&argc, &argv); }
Session::~Session() { MPI_Finalize(); }

int rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

void broadcast(void* data, std::size_t bytes, int root) {
  char* p = static_cast<char*>(data);
  for (std::size_t at = 0; at < bytes; at += kPiece)
    MPI_Bcast(p + at, piece(at, bytes), MPI_BYTE, root, MPI_COMM_WORLD);
}

void send(const void* data, std::size_t bytes, int to, int tag) {
  const char* p = static_cast<const char*>(data);
  for (std::size_t at = 0; at < bytes; at += kPiece)
    MPI_Send(p + at, piece(at, bytes), MPI_BYTE, to, tag, MPI_COMM_WORLD);
}

void receive(void* data, std::size_t bytes, int from, int tag) {
  char* p = static_cast<char*>(data);
  for (std::size_t at = 0; at < bytes; at += kPiece)
    MPI_Recv(p + at, piece(at, bytes), MPI_BYTE, from, tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
}

void all_gather(const double* mine, int count, double* all, const int* counts, const int* offsets) {
  MPI_Allgatherv(mine, count, MPI_DOUBLE, all, counts, offsets, MPI_DOUBLE, MPI_COMM_WORLD);
}

void abort(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

}  // namespace llama::transport

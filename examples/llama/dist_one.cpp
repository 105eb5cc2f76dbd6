/// \file dist_one.cpp
/// The transport of a single process (q2n_llama, the tests): rank 0 of 1. Processes never
/// sends with one process, so the message functions are unreachable and say so if reached.

#include "transport.hpp"

#include <cstdlib>
#include <stdexcept>
#include <string>

namespace llama::transport {
namespace {
[[noreturn]] void alone(const char* what) {
  throw std::logic_error(std::string("llama::transport::") + what +
                         ": a single process has no other to talk to");
}
}  // namespace

Session::Session(int&, char**&) {}
Session::~Session() = default;
int rank() { return 0; }
int size() { return 1; }
void broadcast(void*, std::size_t, int) { alone("broadcast"); }
void send(const void*, std::size_t, int, int) { alone("send"); }
void receive(void*, std::size_t, int, int) { alone("receive"); }
void all_gather(const double*, int, double*, const int*, const int*) { alone("all_gather"); }
void abort(int code) { std::exit(code); }

}  // namespace llama::transport

// The two kinds of error a user can cause. The command line maps both to exit code 2; anything else is a bug.
#pragma once

#include <stdexcept>
#include <string>

namespace qtrain {

// A bad flag, option or configuration value. The message names the flag and the valid range.
class UsageError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// A missing, truncated or corrupt input file. The message names the file and, where it applies, the byte offset.
class InputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace qtrain

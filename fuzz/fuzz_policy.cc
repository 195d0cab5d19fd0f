// Policy file parser (qtrain/engine/io/policy_file.h). Anything but qtrain::InputError from parsing, or
// qtrain::UsageError from checking against a model, is a finding. A policy that parses must round-trip through
// policy_to_json; one that fits the model must run a forward pass in every pass it lists.
#include <memory>
#include <string>

#include "qtrain/engine/core/autograd.h"
#include "qtrain/engine/io/policy_file.h"
#include "qtrain/engine/models/model.h"
#include "qtrain/quant/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  qtrain::QuantPolicy policy;
  try {
    policy = qtrain::parse_policy("fuzz.json", text);
  } catch (const qtrain::InputError&) {
    return 0;
  }
  if (!(qtrain::parse_policy("again.json", qtrain::policy_to_json(policy)) == policy)) __builtin_trap();
  static const std::unique_ptr<qtrain::Model> model = [] {
    qtrain::ModelSpec spec;
    spec.sizes = {12, 8, 6, 4};
    spec.bits = {4, 4, 4};
    return qtrain::build_model(spec, 1);
  }();
  try {
    qtrain::check_policy(policy, model->named_layers(), "fuzz.json");
  } catch (const qtrain::UsageError&) {
    return 0;
  }
  for (uint32_t pass = 0; pass <= policy.passes.size() && pass < 8; ++pass) {
    qtrain::Tensor x(3, 12, qtrain::DType::kI8, -6);
    for (std::size_t i = 0; i < x.size(); ++i) x.data<int8_t>()[i] = static_cast<int8_t>(i * 37);
    qtrain::StepContext ctx{nullptr, nullptr, 0, 0};
    ctx.pass = pass;
    ctx.policy = &policy;
    model->forward(ctx, qtrain::make_input(std::move(x)));
  }
  return 0;
}

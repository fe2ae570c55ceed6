// pin/nn/sequential.hpp - a chain of modules, named "0", "1", ... like torch.nn.Sequential.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "pin/nn/module.hpp"

namespace pin::nn {

class Sequential : public Module {
public:
    Sequential() = default;
    template <typename M, typename... Args>
    M& add(Args&&... args) {
        auto m = std::make_unique<M>(std::forward<Args>(args)...);
        M& ref = *m;
        add_module(std::move(m));
        return ref;
    }
    Module& add_module(std::unique_ptr<Module> m) {
        m->set_training(training_);
        register_children({m.get()});
        modules_.push_back(std::move(m));
        return *modules_.back();
    }
    Tensor forward(const Tensor& x) override {
        Tensor h = x;
        for (auto& m : modules_) h = m->forward(h);
        return h;
    }
    Tensor backward(const Tensor& dy) override {
        Tensor g = dy;
        for (auto it = modules_.rbegin(); it != modules_.rend(); ++it) g = (*it)->backward(g);
        return g;
    }
    void collect_parameters(const std::string& prefix, std::vector<NamedParameter>& out) override {
        for (size_t i = 0; i < modules_.size(); ++i) modules_[i]->collect_parameters(prefix + std::to_string(i) + ".", out);
    }
    size_t size() const { return modules_.size(); }
    Module& operator[](size_t i) { return *modules_.at(i); }

private:
    std::vector<std::unique_ptr<Module>> modules_;
};

}  // namespace pin::nn
